"""Pipeline benchmark through the real (embedded) broker, side by side in one run:

1. the naive Faust agent (bench/naive_agent.py: one `await topic.send()` per output), no-op classifier;
2. a consume-only Faust agent (`take_events`, nothing else): the ceiling of any worker built on Faust's streams;
3. qcat's worker with the same no-op classifier;
4. qcat's worker with the engine on a random-weight Qwen3-0.6B-shaped model, against the engine's own batched
   throughput at the same batch size (measured before and after the worker, averaged: the machine drifts), and its
   end-to-end latency at half of its maximum load.

Each run preloads the input topic and starts the worker process. No-op runs are timed from the first to the last
output's broker timestamp; the model run from the worker's readiness to the last output (its first batch takes
as long as any other, so leaving it out would flatter the worker). Prints a table and, last,
`events_per_s=N speedup_vs_naive_faust=X`.

    python bench/pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker.broker import EmbeddedBroker, free_port  # noqa: E402
from worker.processes import terminate, wait_ready  # noqa: E402

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


async def paced(address: str, topic: str, count: int, rate: float) -> None:
    from datetime import UTC, datetime

    producer = AIOKafkaProducer(bootstrap_servers=address, linger_ms=0)
    await producer.start()
    try:
        started = time.monotonic()
        for i in range(count):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.send(topic, event(i, datetime.now(UTC).isoformat()), key=f"b{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def drain(
    address: str, topic: str, count: int, timeout: float, parse: bool = False
) -> tuple[tuple[float, float], list[Any]]:
    """Read `count` records of `topic`; return the first and last record's broker-side timestamps (seconds since the
    epoch) and, if asked, their values."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=address,
        group_id=f"reader-{topic}",
        auto_offset_reset="earliest",
        metadata_max_age_ms=500,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    seen, values, stamps = 0, [], []
    deadline = time.monotonic() + timeout
    try:
        while seen < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                seen += len(records)
                stamps += [records[0].timestamp, records[-1].timestamp]
                if parse:
                    values.extend(json.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    if seen < count:
        raise RuntimeError(f"only {seen} of {count} records on {topic} within {timeout:.0f}s")
    return (min(stamps) / 1000, max(stamps) / 1000), values


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
        "QCAT_LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        **settings,
    }


def run_variant(
    name: str, address: str, tmp: Path, count: int, settings: dict[str, str], from_ready: bool = False
) -> dict[str, Any]:
    """Preload `count` events, start the worker, time until every categorized output is back."""
    prefix = f"bench-{name}-{os.getpid()}"
    asyncio.run(preload(address, f"{prefix}.incoming", count))
    web_port = free_port()
    env = worker_env(address, prefix, tmp / name, web_port, settings)
    baseline = name in ("naive-faust", "consume-only-faust")
    command = [sys.executable, "bench/naive_agent.py"] if baseline else [sys.executable, "-m", "qcat", "worker"]
    process = start(command, env, tmp / f"{name}.log", web_port)
    ready = time.time()
    try:
        if name == "consume-only-faust":
            seconds = consumed_seconds(web_port, count, timeout=600)
        else:
            first, last = asyncio.run(drain(address, f"{prefix}.categorized", count, timeout=600))[0]
            seconds = last - (ready if from_ready else first)
    finally:
        terminate(process)
    result = {"variant": name, "events": count, "seconds": seconds, "events_per_s": count / seconds}
    print(f"{name:28} {count:7d} events  {result['events_per_s']:9.0f} events/s", flush=True)
    return result


def consumed_seconds(web_port: int, count: int, timeout: float) -> float:
    """The consume-only agent's own clock: from its first to its last micro-batch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/stats", timeout=5) as response:
            stats = json.loads(response.read())
        if stats["events"] >= count:
            return float(stats["last"] - stats["first"])
        time.sleep(0.2)
    raise RuntimeError(f"the consume-only agent saw {stats['events']} of {count} events within {timeout:.0f}s")


def engine_throughput(batch_size: int, count: int) -> dict[str, Any]:
    """The engine alone on the same model and batch size, in this process: the ceiling for the worker."""
    from bench.models import qwen3_shape
    from qcat.settings import EngineSettings

    engine = qwen3_shape(EngineSettings(batch_size=batch_size))
    texts = [QUESTIONS[i % len(QUESTIONS)] for i in range(count)]
    engine.classify(texts[:batch_size])
    latencies = []
    started = time.perf_counter()
    for i in range(0, count, batch_size):
        t = time.perf_counter()
        engine.classify(texts[i : i + batch_size])
        latencies.append(time.perf_counter() - t)
    seconds = time.perf_counter() - started
    return {"events_per_s": count / seconds, "p50_batch_s": statistics.median(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer events and no model runs: within 60 s")
    parser.add_argument("--events", type=int, default=None, help="events for the no-op runs (20000; quick 4000)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline.json")
    args = parser.parse_args()
    count = args.events or (4000 if args.quick else 20000)
    batch = str(args.max_batch)
    report: dict[str, Any] = {
        "command": "python bench/pipeline.py " + " ".join(sys.argv[1:]),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
    }
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        noop = {
            "QCAT_CLASSIFIER": "worker.classifier:constant_classifier",
            "QCAT_MAX_BATCH": batch,
            "QCAT_MAX_WAIT": "0.05",
        }
        naive = run_variant("naive-faust", broker.address, tmp, count, {})
        ceiling = run_variant("consume-only-faust", broker.address, tmp, count, {"BENCH_CONSUME_ONLY": "1", **noop})
        qcat = run_variant("qcat-noop", broker.address, tmp, count, noop)
        qcat["vs_consume_only"] = qcat["events_per_s"] / ceiling["events_per_s"]
        report |= {"naive_faust": naive, "consume_only_faust": ceiling, "qcat_noop": qcat}
        if not args.quick:
            model = {
                "QCAT_CLASSIFIER": "bench.models:qwen3_shape",
                "QCAT_MAX_BATCH": batch,
                "QCAT_MAX_WAIT": "0.05",
                "QCAT_BATCH_SIZE": batch,
            }
            model_events = 12 * args.max_batch
            before = engine_throughput(args.max_batch, model_events)
            worker = run_variant("qcat-qwen3-shape", broker.address, tmp, model_events, model, from_ready=True)
            after = engine_throughput(args.max_batch, model_events)
            engine = {
                "events_per_s": (before["events_per_s"] + after["events_per_s"]) / 2,
                "p50_batch_s": (before["p50_batch_s"] + after["p50_batch_s"]) / 2,
                "before": before,
                "after": after,
            }
            print(
                f"{'engine alone, batch ' + batch:28} {model_events:7d} events  {engine['events_per_s']:9.1f} events/s"
                f" (before {before['events_per_s']:.1f}, after {after['events_per_s']:.1f})"
            )
            worker["vs_engine"] = worker["events_per_s"] / engine["events_per_s"]
            print(f"worker / engine: {worker['vs_engine']:.2f}")
            report |= {"engine_alone": engine, "qcat_qwen3_shape": worker}
            report["latency_at_half_load"] = latency_at_half_load(broker.address, tmp, model, engine, args)
    speedup = qcat["events_per_s"] / naive["events_per_s"]
    report["speedup_vs_naive_faust"] = speedup
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    print(f"events_per_s={qcat['events_per_s']:.0f} speedup_vs_naive_faust={speedup:.1f}")


def latency_at_half_load(
    address: str, tmp: Path, settings: dict[str, str], engine: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Send at half the engine's throughput for ~20 s; p99 of the events' own created->categorized latency."""
    prefix = f"bench-latency-{os.getpid()}"
    web_port = free_port()
    env = worker_env(address, prefix, tmp / "latency", web_port, settings)
    process = start([sys.executable, "-m", "qcat", "worker"], env, tmp / "latency.log", web_port)
    rate = engine["events_per_s"] / 2
    count = int(rate * 20)
    try:

        async def run() -> list[Any]:
            reader = asyncio.create_task(drain(address, f"{prefix}.categorized", count, timeout=300, parse=True))
            await paced(address, f"{prefix}.incoming", count, rate)
            return (await reader)[1]

        values = asyncio.run(run())
    finally:
        terminate(process)
    latencies = sorted(v["latency_ms"] for v in values)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    budget = 1000 * (float(settings["QCAT_MAX_WAIT"]) + 2 * engine["p50_batch_s"])
    print(
        f"latency at {rate:.1f} events/s: p50 {statistics.median(latencies):.0f} ms, p99 {p99:.0f} ms "
        f"(budget max_wait + 2 x batch = {budget:.0f} ms)"
    )
    return {"rate": rate, "events": count, "p50_ms": statistics.median(latencies), "p99_ms": p99, "budget_ms": budget}


if __name__ == "__main__":
    main()
