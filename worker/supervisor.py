"""One pod per GPU: `qcat worker` as a supervisor of one engine core (the process that owns the GPU,
`worker.engine_core`) and several front-end worker processes (`worker.remote`), all in the pod's consumer group.

Each front-end is a whole worker (Kafka, decoding, tokenizing, predictions, publishing, hot swap, shadow, corrections,
at-least-once acks), with `QCAT_CLASSIFIER` pointing at the core. The supervisor serves the pod's web port: `/healthz`
while every process lives, `/readyz` when every front-end is ready, `/metrics` as every front-end's samples labelled
`frontend="N"`. The death of any process ends the pod (exit status `PART_DIED`): an orchestrator restarts it, and
what was not acknowledged is redelivered. SIGTERM stops the front-ends first (each commits what it published), then
the core.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from pydantic import SecretStr

from qcat.errors import UnavailableError
from qcat.worker.broker import free_port
from qcat.worker.engine_core import run_core
from qcat.worker.settings import WorkerSettings

log = structlog.get_logger(__name__)
PART_DIED = 71
"""The pod's exit status when one of its processes died (EX_OSERR)."""
REMOTE = "qcat.worker.remote:remote_classifier"
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?( .*)$")


def environment(settings: WorkerSettings, **overrides: object) -> dict[str, str]:
    """The front-end's `QCAT_*` variables: every setting given to the supervisor (flags included), then `overrides`."""
    values: dict[str, Any] = settings.model_dump(exclude_unset=True) | overrides
    env = {key: value for key, value in os.environ.items() if not key.startswith("QCAT_")}
    for name, given in values.items():
        if given is None:
            continue
        value = given.get_secret_value() if isinstance(given, SecretStr) else given
        env[f"QCAT_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


class Pod:
    def __init__(self, settings: WorkerSettings, frontends: int) -> None:
        self.settings, self.count = settings, frontends
        self.folder = Path(tempfile.mkdtemp(prefix="qcat-core-"))
        self.address = str(self.folder / "core.sock")
        self.key = secrets.token_bytes(32)  # front-ends prove they hold it before the core reads their pickles
        self.core: Any = None
        self.frontends: list[tuple[subprocess.Popen[bytes], int]] = []
        self.stopping = False

    def start(self) -> None:
        self.core = multiprocessing.get_context("spawn").Process(
            target=run_core, args=(self.settings, self.address, self.key), name="qcat-engine-core", daemon=False
        )
        self.core.start()
        while not Path(self.address).exists():  # the core listens before it loads any model
            if not self.core.is_alive():
                raise UnavailableError(f"the engine core exited with {self.core.exitcode} before it listened")
            time.sleep(0.05)
        for index in range(self.count):
            port = free_port()
            env = environment(
                self.settings, frontends=1, classifier=REMOTE, engine_socket=self.address, engine_key=self.key.hex(),
                web_port=port, web_host="127.0.0.1", app_id=self.settings.app_id,
            )  # fmt: skip
            process = subprocess.Popen([sys.executable, "-m", "qcat", "worker"], env=env)
            self.frontends.append((process, port))
            log.info("front-end started", frontend=index, pid=process.pid, web_port=port)

    def dead(self) -> str | None:
        if self.core is not None and not self.core.is_alive():
            return f"the engine core exited with {self.core.exitcode}"
        for index, (process, _) in enumerate(self.frontends):
            if process.poll() is not None:
                return f"front-end {index} exited with {process.returncode}"
        return None

    def stop(self) -> None:
        self.stopping = True
        for process, _ in self.frontends:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in self.frontends:
            try:
                process.wait(timeout=self.settings.stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.core is not None and self.core.is_alive():
            self.core.terminate()
            self.core.join(timeout=10)

    def get(self, port: int, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read().decode()
        except OSError as error:
            return 503, str(error)

    def ready(self) -> bool:
        return self.dead() is None and all(self.get(port, "/readyz")[0] == 200 for _, port in self.frontends)

    def metrics(self) -> str:
        """Every front-end's samples, labelled by front-end; each metric's HELP and TYPE once."""
        lines, described = [], set()
        for index, (_, port) in enumerate(self.frontends):
            status, text = self.get(port, "/metrics")
            if status != 200:
                continue
            for line in text.splitlines():
                if line.startswith("#"):
                    if line not in described:
                        described.add(line)
                        lines.append(line)
                    continue
                match = SAMPLE.match(line)
                if match:
                    name, labels, value = match.groups()
                    inner = f'frontend="{index}"' + ("," + labels[1:-1] if labels and labels != "{}" else "")
                    lines.append(f"{name}{{{inner}}}{value}")
        return "\n".join(lines) + "\n"


async def serve(pod: Pod) -> int:
    app = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        dead = pod.dead()
        parts = {"core_pid": pod.core.pid, "frontend_pids": [process.pid for process, _ in pod.frontends]}
        body = {"status": "alive" if dead is None else dead, **parts}
        return web.json_response(body, status=200 if dead is None else 503)

    async def readyz(request: web.Request) -> web.Response:
        ready = await asyncio.get_running_loop().run_in_executor(None, pod.ready)
        return web.json_response({"ready": ready, "frontends": pod.count}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        text = await asyncio.get_running_loop().run_in_executor(None, pod.metrics)
        return web.Response(text=text, content_type="text/plain")

    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, pod.settings.web_host, pod.settings.web_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        while not stop.is_set():
            dead = pod.dead()
            if dead is not None:
                log.error("a part of the pod died; stopping the rest so that the pod restarts", why=dead)
                return PART_DIED
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                continue
        return 0
    finally:
        await runner.cleanup()


def run_pod(settings: WorkerSettings, frontends: int) -> int:
    """Start the core and `frontends` front-ends, serve the pod's web port, and watch them until a signal or a
    death; returns the exit status."""
    pod = Pod(settings, frontends)
    pod.start()
    try:
        return asyncio.run(serve(pod))
    finally:
        pod.stop()
