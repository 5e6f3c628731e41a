"""The broker's side of the pipeline benchmarks (bench/pipeline.py): events in (preloaded or paced), outputs back
(with their producer-side timestamps), and `qcat worker` processes started against the embedded broker."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qcat.worker.broker import FAST_JOIN_SESSION_TIMEOUT, free_port  # noqa: E402
from qcat.worker.processes import terminate, wait_ready  # noqa: E402

RUN_NUMBERS = itertools.count()
REPLICA_SETTLE_S = 5.0
"""Seconds for the last replica's rebalance to finish before events are produced."""
QUESTIONS = [json.loads(line)["text"] for line in (ROOT / "data" / "trec" / "test.jsonl").open()]


def event(index: int, created_at: str | None = None) -> bytes:
    body: dict[str, Any] = {"event_id": f"b{index}", "text": QUESTIONS[index % len(QUESTIONS)]}
    if created_at:
        body["created_at"] = created_at
    return json.dumps(body).encode()


async def preload(address: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=address, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, event(i), key=f"b{i}".encode()) for i in range(count)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def paced(address: str, topic: str, count: int, rate: float, first: int = 0) -> None:
    from datetime import UTC, datetime

    producer = AIOKafkaProducer(bootstrap_servers=address, linger_ms=0)
    await producer.start()
    try:
        started = time.monotonic()
        for i in range(count):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            index = first + i
            await producer.send(topic, event(index, datetime.now(UTC).isoformat()), key=f"b{index}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def drain(
    address: str,
    topic: str,
    count: int,
    timeout: float,
    parse: bool = False,
    when_complete: bool = False,
    distinct: bool = False,
) -> tuple[list[float], list[Any]]:
    """Read `count` records of `topic`; return their producer-side timestamps (seconds since the epoch, sorted) and,
    if asked, their values. `when_complete`: read only once all `count` are on the broker (watching its end offsets),
    so that reading does not take CPU from the worker being timed: on 2 cores it competed with it and the broker.
    `distinct` (with `parse`): read until `count` distinct event ids, not records, have come (redeliveries)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=address,
        enable_auto_commit=False,
        metadata_max_age_ms=500,
        fetch_max_wait_ms=500,  # producer-side timestamps time the worker; a lazy reader disturbs it less
    )
    await consumer.start()
    # its partitions assigned directly, not through a consumer group: joining one took ~30 s on the embedded broker
    deadline = time.monotonic() + timeout
    while not (partitions := consumer.partitions_for_topic(topic)) and time.monotonic() < deadline:
        await consumer.topics()  # refreshes the metadata; the topic appears once the worker has created it
        await asyncio.sleep(0.2)
    assigned = [TopicPartition(topic, partition) for partition in sorted(partitions or ())]
    consumer.assign(assigned)
    # "complete" is "stopped growing": the embedded broker's end offset can stop short of a multi-record batch's end
    # (9,986 of 10,000 records while all were readable)
    previous = -1
    while when_complete and time.monotonic() < deadline:
        present = sum((await consumer.end_offsets(assigned)).values())
        if present >= count or present == previous > 0:
            break
        previous = present
        await asyncio.sleep(0.5)
    await consumer.seek_to_beginning()
    seen, values, stamps, ids = 0, [], [], set()
    try:
        while (len(ids) if distinct else seen) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                seen += len(records)
                stamps += [record.timestamp / 1000 for record in records]
                if parse:
                    parsed = [json.loads(r.value) for r in records]
                    values += parsed
                    ids.update(value["event_id"] for value in parsed)
    finally:
        await consumer.stop()
    if seen < count:
        raise RuntimeError(f"only {seen} of {count} records on {topic} within {timeout:.0f}s")
    return sorted(stamps), values


def steady_rate(stamps: list[float], gap: float = 0.3) -> float:
    """Events per second after the first micro-batch: a batch's outputs share one timestamp (within a few ms), so
    the span from the first batch's outputs to the last batch's covers every batch but the first; count those.
    Where no gap of `gap` seconds parts the first batch from the next (a GPU's batches follow each other closely),
    the rate over the whole span."""
    first_batch = next((i for i in range(1, len(stamps)) if stamps[i] - stamps[i - 1] > gap), len(stamps))
    if first_batch == len(stamps):
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return (len(stamps) - first_batch) / (stamps[-1] - stamps[first_batch - 1])


def start(command: list[str], env: dict[str, str], log: Path, web_port: int) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    wait_ready(process, web_port, log)
    return process


def worker_env(address: str, prefix: str, data_dir: Path, web_port: int, settings: dict[str, str]) -> dict[str, str]:
    return {
        **os.environ,
        "QCAT_BROKERS": address,
        "QCAT_TOPIC_PREFIX": prefix,
        "QCAT_APP_ID": prefix,
        "QCAT_WEB_PORT": str(web_port),
        "QCAT_DATA_DIR": str(data_dir),
        "QCAT_PARTITIONS": "2",
        "QCAT_SESSION_TIMEOUT": str(FAST_JOIN_SESSION_TIMEOUT),
        "QCAT_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        **settings,
    }


def inference_per_batch(web_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    values = dict(line.split(" ") for line in text.splitlines() if line.startswith("qcat_inference_seconds_"))
    return float(values["qcat_inference_seconds_sum"]) / float(values["qcat_inference_seconds_count"])


def start_workers(
    address: str, prefix: str, tmp: Path, settings: dict[str, str], workers: int
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    """`workers` worker processes in one consumer group, each ready; more than one: settled in the group."""
    settings = settings | {"QCAT_PARTITIONS": str(max(2, 2 * workers))}
    ports = [free_port() for _ in range(workers)]
    processes = []
    for i, port in enumerate(ports):  # every process started before waiting for any: one join, not N in turn
        with (tmp / f"{prefix}-{i}.log").open("wb") as out:
            env = worker_env(address, prefix, tmp / f"{prefix}-{i}", port, settings)
            command = [sys.executable, "-m", "qcat", "worker"]
            processes.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT))
    for i, (process, port) in enumerate(zip(processes, ports, strict=True)):
        wait_ready(process, port, tmp / f"{prefix}-{i}.log")
    if workers > 1:
        time.sleep(REPLICA_SETTLE_S)
    return processes, ports


def paced_latency(
    address: str, tmp: Path, settings: dict[str, str], rate: float, count: int, workers: int = 1
) -> dict[str, Any]:
    """Send `count` events at `rate` per second to fresh workers; p50 and p99 of their created->categorized ms."""
    prefix = f"bench-latency-{os.getpid()}-{next(RUN_NUMBERS)}"
    processes, _ = start_workers(address, prefix, tmp, settings, workers)
    try:

        async def run() -> list[Any]:
            reader = asyncio.create_task(drain(address, f"{prefix}.categorized", count, timeout=300, parse=True))
            await paced(address, f"{prefix}.incoming", count, rate)
            return (await reader)[1]

        values = asyncio.run(run())
    finally:
        for process in processes:
            terminate(process)
    latencies = sorted(v["latency_ms"] for v in values)
    return {
        "rate": rate,
        "events": count,
        "p50_ms": statistics.median(latencies),
        "p99_ms": quantile(latencies, 0.99),
        "max_ms": latencies[-1],
        "p99_ms_by_second": latency_by_second(values),
    }


def quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_by_second(values: list[Any]) -> list[float]:
    """p99 latency of the events created in each second of a run: whether the tail is spread or in bursts."""
    created = [datetime.fromisoformat(v["categorized_at"]).timestamp() - v["latency_ms"] / 1000 for v in values]
    start = min(created)
    seconds: dict[int, list[float]] = {}
    for stamp, value in zip(created, values, strict=True):
        seconds.setdefault(int(stamp - start), []).append(value["latency_ms"])
    return [round(quantile(sorted(seconds[s]), 0.99), 1) for s in sorted(seconds)]
