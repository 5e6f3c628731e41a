"""Processes the CLI starts stop with it: SIGTERM to `qcat broker` or `qcat demo` (what docker stop, systemd,
Kubernetes and `timeout` send) leaves no broker or worker behind; a worker creates its data folder or says why not."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from qcat.worker.broker import free_port
from tests.integration.kafka import ROOT, WorkerProcess, run_qcat, unique


def descendants(pid: int) -> set[int]:
    """Every living process below `pid`, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    living = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            living.add(pid)
    return living


def wait_for(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_to_qcat_broker_stops_the_broker_too() -> None:
    """After SIGTERM, `qcat broker` exits 0 and the Tansu process it started no longer listens."""
    port = free_port()
    command = [sys.executable, "-m", "qcat", "broker", "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: listening(port), 30), "the broker did not start"
        children = descendants(process.pid)
        assert children
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        left = lambda: {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in alive(children)}  # noqa: E731
        assert wait_for(lambda: not alive(children), 10), f"left running: {left()}"
        assert not listening(port)
    finally:
        process.kill()


def test_sigterm_to_qcat_demo_stops_its_worker_and_broker(tmp_path: Path) -> None:
    """SIGTERM in the middle of `qcat demo` stops the worker and broker it started, and exits 130."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "qcat", "demo", "--count", "500", "--rate", "5", "--base-model", "tiny-qwen3"]
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        assert wait_for(lambda: "worker: ready" in log.read_text(errors="replace"), 120), log.read_text()[-2000:]
        children = descendants(process.pid)
        assert len(children) >= 2, "a broker and a worker"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 130
        left = lambda: {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in alive(children)}  # noqa: E731
        assert wait_for(lambda: not alive(children), 10), f"left running: {left()}"
    finally:
        process.kill()


def test_the_worker_creates_its_data_folder_or_says_why_not(broker: str, tmp_path: Path) -> None:
    """A QCAT_DATA_DIR whose parents are missing is created; one that cannot be created is one error line."""
    worker = WorkerProcess(broker, unique("t-datadir"), tmp_path, data_dir=tmp_path / "a" / "b" / "faust").start()
    worker.stop()
    assigned = [line for line in worker.log().splitlines() if "partitions assigned" in line]
    assert assigned, worker.log()
    assert all('"partitions": []' not in line for line in assigned), assigned  # Faust passes them positionally
    (tmp_path / "file").write_text("")
    env = {**os.environ, "QCAT_DATA_DIR": str(tmp_path / "file" / "faust"), "QCAT_BROKERS": broker}
    done = run_qcat(env, "worker", timeout=60)
    assert done.returncode == 5
    assert "cannot create QCAT_DATA_DIR" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_worker_whose_web_port_is_taken_says_so_before_loading_anything(broker: str, tmp_path: Path) -> None:
    """One error line and exit 5, at once, instead of a Faust log line and exit 1 after the model loaded."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {**os.environ, "QCAT_BROKERS": broker, "QCAT_WEB_PORT": str(taken.getsockname()[1])}
        done = run_qcat(env, "worker", timeout=60)
    assert done.returncode == 5, done.stderr[-2000:]
    assert "is taken" in done.stderr
    assert "Traceback" not in done.stderr
