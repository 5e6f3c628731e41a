"""Child processes that the CLI, tests and benchmarks start: wait until a worker is ready, stop one politely."""

from __future__ import annotations

import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from qcat.errors import UnavailableError


def wait_ready(process: subprocess.Popen[bytes], web_port: int, log: Path, timeout: float = 180) -> None:
    """Poll the worker's /readyz until it answers 200; fail with the log's tail if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UnavailableError(
                f"the worker exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise UnavailableError(
        f"the worker was not ready within {timeout:.0f}s:\n{log.read_text(errors='replace')[-3000:]}"
    )


def terminate(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (docker stop, systemd, Kubernetes, `timeout`) unwinds like Ctrl-C, so `with` blocks stop the child
    processes they started. Python's default ends the process at once and leaves its children running."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
