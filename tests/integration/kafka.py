"""Test helpers that talk to the real broker: produce, consume, and run `qcat worker` as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from qcat.worker.broker import free_port
from qcat.worker.processes import terminate, wait_ready

ROOT = Path(__file__).resolve().parents[2]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def _produce(
    address: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]]]],
    options: dict[str, Any],
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=address, linger_ms=5, **options)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key, headers=headers) for key, value, headers in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def produce(
    address: str, topic: str, records: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]]]], **options: Any
) -> None:
    """Send and wait for the broker's acks; `options` go to aiokafka (security_protocol, ssl_context, ...)."""
    asyncio.run(_produce(address, topic, list(records), options))


def question(event_id: str, text: str, **extra: Any) -> bytes:
    return json.dumps({"event_id": event_id, "text": text, **extra}).encode()


@dataclass
class Collected:
    by_topic: dict[str, list[Any]] = field(default_factory=dict)

    def values(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(record.value) for record in self.by_topic.get(topic, [])]


async def _consume(
    address: str, topics: list[str], done: Callable[[Collected], bool], timeout: float, options: dict[str, Any]
) -> Collected:
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=address,
        group_id=unique("test-reader"),
        auto_offset_reset="earliest",
        metadata_max_age_ms=1000,
        **options,
    )
    await consumer.start()
    collected = Collected()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not done(collected):
            batches = await consumer.getmany(timeout_ms=500)
            for partition, records in batches.items():
                collected.by_topic.setdefault(partition.topic, []).extend(records)
    finally:
        await consumer.stop()
    return collected


def consume(
    address: str, topics: list[str], done: Callable[[Collected], bool], timeout: float = 90, **options: Any
) -> Collected:
    """Read the topics from the start until `done` says enough (or the timeout; the caller asserts)."""
    return asyncio.run(_consume(address, topics, done, timeout, options))


def categorized_ids(address: str, prefix: str, total: int, timeout: float) -> list[str]:
    """Every `event_id` on the categorized topic, duplicates included, read until `total` distinct ones are there."""
    topic = f"{prefix}.categorized"
    done = consume(address, [topic], lambda c: len({e["event_id"] for e in c.values(topic)}) >= total, timeout=timeout)
    return [e["event_id"] for e in done.values(topic)]


def run_qcat(env: dict[str, str], *args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m qcat ARGS` to completion, output captured (for commands expected to exit)."""
    command = [sys.executable, "-m", "qcat", *(str(arg) for arg in args)]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def _copy(source: IO[bytes], path: Path) -> None:
    with source, path.open("ab") as log:
        for line in source:
            log.write(line)
            log.flush()


class WorkerProcess:
    """`python -m qcat worker` on the built-in model, configured through QCAT_* variables like in production."""

    def __init__(self, address: str, prefix: str, tmp: Path, **settings: object) -> None:
        self.web_port = free_port()
        self.env = {
            **os.environ,
            "QCAT_BROKERS": address,
            "QCAT_TOPIC_PREFIX": prefix,
            "QCAT_APP_ID": f"{prefix}-worker",
            "QCAT_BASE_MODEL": "tiny-qwen3",
            "QCAT_DTYPE": "float32",
            "QCAT_PARTITIONS": "2",
            "QCAT_WEB_PORT": str(self.web_port),
            "QCAT_DATA_DIR": str(tmp / "faust"),
            "QCAT_CORRECTIONS_DIR": str(tmp / "corrections"),
            "QCAT_REFUSED_DIR": str(tmp / "refused"),
            "QCAT_SESSION_TIMEOUT": "10",
            "PYTHONUNBUFFERED": "1",
        }
        self.env.update({f"QCAT_{key.upper()}": str(value) for key, value in settings.items()})
        self.log_path = tmp / f"worker-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> WorkerProcess:
        """The worker writes to a pipe, as under a container runtime (a file would share the worker's disk and
        file-size limit, see bench/disk.py); a thread copies it to the log file."""
        self.process = subprocess.Popen(
            [sys.executable, "-m", "qcat", "worker"],
            env=self.env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=_copy, args=(self.process.stdout, self.log_path), daemon=True).start()
        wait_ready(self.process, self.web_port, self.log_path, timeout)
        return self

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=5) as response:
            return str(response.read().decode())

    def wait_for_metric(self, sample: str, at_least: float, timeout: float = 60) -> float:
        """Poll /metrics until the sample (name with labels) reaches `at_least`; return its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.get("/metrics").splitlines():
                if line.startswith(sample + " ") and float(line.split()[-1]) >= at_least:
                    return float(line.split()[-1])
            time.sleep(0.05)
        raise RuntimeError(f"{sample} did not reach {at_least} within {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]
