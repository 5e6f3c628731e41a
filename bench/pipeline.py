"""Pipeline benchmark through the real (embedded) broker, side by side in one run:

1. the naive Faust agent (bench/naive_agent.py: one `await topic.send()` per output), no-op classifier, on the same
   event loop as qcat's worker (`--event-loop`, default uvloop) and, as a naive agent runs by default, on asyncio's;
   and the same agent written with Faust records, as Faust's documentation writes agents;
2. a consume-only Faust agent (`take_events`, nothing else): the ceiling of any worker built on Faust's streams;
   and the same agent on qcat's transport (worker/transport.py: Faust's fetch loop without its per-message tasks),
   the ceiling of qcat's worker;
3. qcat's worker with the same no-op classifier;
4. qcat's worker with the engine on a random-weight Qwen3-0.6B-shaped model, against the engine's own batched
   throughput at the same batch size, in rounds (engine alone, worker, engine alone: the machine drifts; the median
   of the rounds' ratios is reported), and its end-to-end latency at half of its maximum load.

The no-op variants run in rounds, each variant in turn (`--noop-rounds`, 3); figures are medians over the rounds
and ratios the median of the rounds' ratios. Each run preloads the input topic and starts the worker process.
Runs are timed by their outputs' timestamps (set by the worker's producer), read once all are written
(`--read-during`: while the no-op workers run, which on 2 cores takes CPU from the worker and the broker). No-op runs
count from the first output to the last; the model run counts the events of every batch after the first over the time
from the first batch's outputs to the last's (`steady_rate`), the same steady state the engine is timed in.
Prints a table and, last, `events_per_s=N speedup_vs_naive_faust=X`.

    python bench/pipeline.py [--quick]
    python bench/pipeline.py --fetch-wait --out bench/results/pipeline-fetch-wait.json   # low-load latency only
    QCAT_DEVICE=cuda python bench/pipeline.py --model-only --max-batch 512 --workers 2 --out ...  # a GPU: N replicas

With `--workers N` the model runs start N worker processes in one consumer group (replicas sharing the device, as N
pods on one GPU would), settled in the group before the events are produced; every event id must come back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stream import (  # noqa: E402
    QUESTIONS,
    RUN_NUMBERS,
    drain,
    inference_per_batch,
    paced_latency,
    preload,
    start,
    start_workers,
    steady_rate,
    worker_env,
)
from qcat.worker.broker import EmbeddedBroker, free_port  # noqa: E402
from qcat.worker.processes import terminate  # noqa: E402
from qcat.worker.settings import WorkerSettings  # noqa: E402


def run_variant(
    name: str,
    address: str,
    tmp: Path,
    count: int,
    settings: dict[str, str],
    steady: bool = False,
    read_during: bool = False,
) -> dict[str, Any]:
    """Preload `count` events, start the worker, time until every categorized output is back."""
    prefix = f"bench-{name}-{os.getpid()}-{next(RUN_NUMBERS)}"  # fresh topics and consumer group every run
    asyncio.run(preload(address, f"{prefix}.incoming", count))
    web_port = free_port()
    env = worker_env(address, prefix, tmp / name, web_port, settings)
    baseline = name.startswith(("naive-faust", "consume-only"))
    command = [sys.executable, "bench/naive_agent.py"] if baseline else [sys.executable, "-m", "qcat", "worker"]
    process = start(command, env, tmp / f"{name}.log", web_port)
    result: dict[str, Any] = {"variant": name, "events": count}
    try:
        if name.startswith("consume-only"):
            result["events_per_s"] = count / consumed_seconds(web_port, count, timeout=600)
        else:
            stamps, _ = asyncio.run(drain(address, f"{prefix}.categorized", count, 600, when_complete=not read_during))
            result["events_per_s"] = steady_rate(stamps) if steady else count / (stamps[-1] - stamps[0])
        if steady:  # the model's own time per batch inside the worker: the rest of a batch interval is overhead
            result["inference_s_per_batch"] = inference_per_batch(web_port)
    finally:
        terminate(process)
    print(f"{name:28} {count:7d} events  {result['events_per_s']:9.0f} events/s", flush=True)
    return result


def run_replicas(name: str, address: str, tmp: Path, count: int, settings: dict[str, str], workers: int) -> dict:
    """`workers` worker processes in one consumer group (replicas sharing this machine's device), started and settled
    in the group before `count` events are produced as fast as the producer goes (started after a preload, the first
    replica would take everything until the others joined). Every event must come back: outputs are counted by
    event id, since a rebalance may redeliver some."""
    prefix = f"bench-{name}-{os.getpid()}-{next(RUN_NUMBERS)}"
    processes, ports = start_workers(address, prefix, tmp, settings, workers)
    result: dict[str, Any] = {"variant": name, "events": count, "workers": workers}
    try:
        asyncio.run(preload(address, f"{prefix}.incoming", count))
        stamps, values = asyncio.run(drain(address, f"{prefix}.categorized", count, 600, parse=True, distinct=True))
        result["events_per_s"] = steady_rate(stamps)
        result["outputs"], result["distinct_events"] = len(values), len({v["event_id"] for v in values})
        result["inference_s_per_batch"] = statistics.mean(inference_per_batch(port) for port in ports)
    finally:
        for process in processes:
            terminate(process)
    print(f"{name:28} {count:7d} events  {result['events_per_s']:9.0f} events/s ({workers} workers)", flush=True)
    return result


def paired_median(numerators: list[float], denominators: list[float]) -> float:
    """The median of the rounds' ratios (each round's runs ran minutes apart at most)."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


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


def engine_throughput(
    batch_size: int, count: int, pass_size: int | None = None, variant: str = "eager"
) -> dict[str, Any]:
    """The engine alone on the same model and micro-batch size (forward passes of `pass_size` questions, default the
    micro-batch), in this process: the ceiling for the worker."""
    from bench.engine import VARIANTS
    from bench.models import qwen3_shape
    from qcat.settings import EngineSettings

    engine = qwen3_shape(EngineSettings(batch_size=pass_size or batch_size, **VARIANTS[variant]))
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
    parser.add_argument("--quick", action="store_true", help="fewer events, only naive, consume-only and qcat: 60 s")
    parser.add_argument("--events", type=int, default=None, help="events for the no-op runs (20000; quick 4000)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--noop-rounds", type=int, default=None, help="rounds of the no-op variants (3; quick 1)")
    parser.add_argument("--model-rounds", type=int, default=3, help="engine / worker / engine rounds with the model")
    parser.add_argument(
        "--event-loop", choices=["uvloop", "asyncio"], default="uvloop", help="every variant's (the worker's default)"
    )
    parser.add_argument(
        "--read-during", action="store_true", help="read the outputs while a no-op worker runs (default: afterwards)"
    )
    parser.add_argument(
        "--fetch-wait",
        action="store_true",
        help="only the no-op worker's latency at 50 events/s, Faust's fetch wait against qcat's (3 rounds)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="worker replicas in one group for the model runs (sharing the device)"
    )
    parser.add_argument("--model-only", action="store_true", help="only the model runs and the latency")
    parser.add_argument("--model-events", type=int, default=None, help="events per model run (12 x --max-batch)")
    parser.add_argument(
        "--pass-size", type=int, default=None, help="questions per forward pass (QCAT_BATCH_SIZE; default --max-batch)"
    )
    parser.add_argument(
        "--variant", default="eager", help="how the engine runs its passes: a name from bench/engine.py's VARIANTS"
    )
    parser.add_argument(
        "--latency-rate", type=float, default=None, help="only the model's latency at this rate (events/s), 20 s"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline.json")
    args = parser.parse_args()
    if args.fetch_wait:
        with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp_name:
            result = fetch_wait_latency(broker.address, Path(tmp_name), rounds=3)
        report = {"command": "python bench/pipeline.py " + " ".join(sys.argv[1:]), "cores": os.cpu_count()}
        args.out.write_text(json.dumps(report | result, indent=2) + "\n")
        print(f"wrote {args.out}")
        return
    if args.latency_rate:
        report = {"command": "python bench/pipeline.py " + " ".join(sys.argv[1:]), "cores": os.cpu_count()}
        settings = model_settings(args, {"QCAT_EVENT_LOOP": args.event_loop})
        with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp_name:
            rate, count = args.latency_rate, int(args.latency_rate * 20)
            report |= paced_latency(broker.address, Path(tmp_name), settings, rate, count, workers=args.workers)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"p50_ms={report['p50_ms']:.0f} p99_ms={report['p99_ms']:.0f} by second {report['p99_ms_by_second']}")
        return
    if args.model_only:
        report = {"command": "python bench/pipeline.py " + " ".join(sys.argv[1:]), "cores": os.cpu_count()}
        with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp_name:
            report |= model_runs(broker.address, Path(tmp_name), args, {"QCAT_EVENT_LOOP": args.event_loop})
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
        print(f"events_per_s={report['events_per_s']:.0f} worker_vs_engine={report['worker_vs_engine']:.2f}")
        return
    count = args.events or (4000 if args.quick else 20000)
    args.noop_rounds = args.noop_rounds or (1 if args.quick else 3)
    batch = str(args.max_batch)
    report: dict[str, Any] = {
        "command": "python bench/pipeline.py " + " ".join(sys.argv[1:]),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
    }
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        loop = {"QCAT_EVENT_LOOP": args.event_loop}  # every variant, the naive agent included, on the same loop
        noop = {
            **loop,
            "QCAT_CLASSIFIER": "constant",
            "QCAT_MAX_BATCH": batch,
            "QCAT_MAX_WAIT": "0.05",
        }
        variants = {"naive-faust": loop}
        if not args.quick:
            variants["naive-faust-records"] = {**loop, "BENCH_NAIVE_RECORDS": "1"}
            if args.event_loop != "asyncio":  # as a naive agent runs by default: on asyncio's loop
                variants["naive-faust-asyncio"] = {}
        variants |= {
            "consume-only-faust": {"BENCH_CONSUME_ONLY": "1", **noop},
            "consume-only-qcat-transport": {"BENCH_CONSUME_ONLY": "1", "BENCH_FAST_TRANSPORT": "1", **noop},
            "qcat-noop": noop,
        }
        # rounds of every variant in turn, each figure the median of its rounds: the machine drifts between runs
        runs: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.noop_rounds):
            for name, settings in variants.items():
                rate = run_variant(name, broker.address, tmp, count, settings, read_during=args.read_during)
                runs[name].append(rate["events_per_s"])
        by_name = {
            name: {"variant": name, "events": count, "events_per_s": statistics.median(rates), "rounds": rates}
            for name, rates in runs.items()
        }
        naive, ceiling, qcat = by_name["naive-faust"], by_name["consume-only-faust"], by_name["qcat-noop"]
        qcat["vs_consume_only"] = paired_median(runs["qcat-noop"], runs["consume-only-faust"])
        qcat["vs_consume_only_qcat_transport"] = paired_median(runs["qcat-noop"], runs["consume-only-qcat-transport"])
        report |= {"naive_faust": naive, "consume_only_faust": ceiling, "qcat_noop": qcat}
        report["consume_only_qcat_transport"] = by_name["consume-only-qcat-transport"]
        for name in ("naive-faust-records", "naive-faust-asyncio"):
            if name in by_name:
                report[name.replace("-", "_")] = by_name[name]
        if not args.quick:
            report |= model_runs(broker.address, tmp, args, loop)
    speedup = paired_median(runs["qcat-noop"], runs["naive-faust"])
    report["speedup_vs_naive_faust"] = speedup
    if "naive-faust-records" in runs:
        records = paired_median(runs["qcat-noop"], runs["naive-faust-records"])
        report["speedup_vs_naive_faust_records"] = records
        print(f"qcat no-op vs the naive agent written with Faust records: {records:.1f}x")
    if "naive-faust-asyncio" in runs:
        default_loop = paired_median(runs["qcat-noop"], runs["naive-faust-asyncio"])
        report["speedup_vs_naive_faust_asyncio"] = default_loop
        print(f"qcat no-op vs the naive agent on Faust's default asyncio loop: {default_loop:.1f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    print(f"events_per_s={qcat['events_per_s']:.0f} speedup_vs_naive_faust={speedup:.1f}")


def model_settings(args: argparse.Namespace, loop: dict[str, str]) -> dict[str, str]:
    """The worker's settings for the model runs."""
    from bench.engine import VARIANTS

    return {
        **loop,
        "QCAT_CLASSIFIER": "bench.models:qwen3_shape",
        "QCAT_MAX_BATCH": str(args.max_batch),
        "QCAT_MAX_WAIT": "0.05",
        "QCAT_BATCH_SIZE": str(args.pass_size or args.max_batch),
        **{f"QCAT_{name.upper()}": str(value).lower() for name, value in VARIANTS[args.variant].items()},
    }


def model_runs(address: str, tmp: Path, args: argparse.Namespace, loop: dict[str, str]) -> dict[str, Any]:
    """The worker with the engine on a random-weight Qwen3-0.6B-shaped model (`--workers` replicas in one group),
    against the engine alone in this process, in rounds; then the latency at half the worker's load."""
    batch = str(args.max_batch)
    model = model_settings(args, loop)
    model_events = args.model_events or 12 * args.max_batch
    # this machine drifts by 10-20% within minutes: each round times the engine alone just before and just
    # after the worker and takes the worker's ratio to their mean; the rounds' median ratio is reported
    rounds = []
    for _ in range(args.model_rounds):
        before = engine_throughput(args.max_batch, model_events // 2, args.pass_size, args.variant)
        if args.workers > 1:
            worker = run_replicas("qcat-qwen3-shape", address, tmp, model_events, model, args.workers)
        else:
            worker = run_variant("qcat-qwen3-shape", address, tmp, model_events, model, steady=True)
        after = engine_throughput(args.max_batch, model_events // 2, args.pass_size, args.variant)
        alone = statistics.fmean([before["events_per_s"], after["events_per_s"]])
        batch_s = statistics.fmean([before["p50_batch_s"], after["p50_batch_s"]])
        rounds.append(
            worker
            | {
                "engine_alone_events_per_s": alone,
                "vs_engine": worker["events_per_s"] / alone,
                "model_slowdown_in_worker": worker["inference_s_per_batch"] / batch_s,
                "engine_runs": [before, after],
            }
        )
        print(
            f"{'engine alone, batch ' + batch:28} before {before['events_per_s']:.1f}, after "
            f"{after['events_per_s']:.1f} events/s; worker / engine {rounds[-1]['vs_engine']:.2f}"
        )
    engine = {
        "events_per_s": statistics.median(r["engine_alone_events_per_s"] for r in rounds),
        "p50_batch_s": statistics.median(run["p50_batch_s"] for r in rounds for run in r["engine_runs"]),
    }
    worker = {
        "variant": "qcat-qwen3-shape",
        "events": model_events,
        "events_per_s": statistics.median(r["events_per_s"] for r in rounds),
        "vs_engine": statistics.median(r["vs_engine"] for r in rounds),
        "model_slowdown_in_worker": statistics.median(r["model_slowdown_in_worker"] for r in rounds),
        "rounds": rounds,
    }
    print(
        f"worker / engine, median of {len(rounds)} rounds: {worker['vs_engine']:.2f} "
        f"({[round(r['vs_engine'], 2) for r in rounds]}); the model's own batch time in the worker / alone: "
        f"{worker['model_slowdown_in_worker']:.2f}"
    )
    latency = latency_at_half_load(address, tmp, model, engine, worker, args)
    return {
        "events_per_s": worker["events_per_s"],
        "engine_questions_per_s": engine["events_per_s"],
        "worker_vs_engine": worker["vs_engine"],
        "p99_ms_half_load": latency["p99_ms"],
        "engine_alone": engine,
        "qcat_qwen3_shape": worker,
        "latency_at_half_load": latency,
    }


def latency_at_half_load(
    address: str,
    tmp: Path,
    settings: dict[str, str],
    engine: dict[str, Any],
    worker: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Send at half the worker's measured throughput for ~20 s; p99 of the events' created->categorized latency."""
    rate = worker["events_per_s"] / 2
    result = paced_latency(address, tmp, settings, rate, int(rate * 20), workers=args.workers)
    budget = 1000 * (float(settings["QCAT_MAX_WAIT"]) + 2 * engine["p50_batch_s"])
    print(
        f"latency at {rate:.1f} events/s: p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms "
        f"(budget max_wait + 2 x batch = {budget:.0f} ms)"
    )
    return result | {"budget_ms": budget}


def fetch_wait_latency(address: str, tmp: Path, rounds: int) -> dict[str, Any]:
    """The no-op worker at 50 events/s, Faust's fetch wait (1.5 s) against qcat's default, alternating rounds."""
    waits = {"faust_1.5s": "1.5", "qcat_default": str(WorkerSettings.model_fields["fetch_max_wait"].default)}
    noop = {"QCAT_CLASSIFIER": "constant", "QCAT_MAX_WAIT": "0.05"}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in waits}
    for _ in range(rounds):
        for name, wait in waits.items():
            runs[name].append(paced_latency(address, tmp, noop | {"QCAT_FETCH_MAX_WAIT": wait}, 50, 500))
            print(f"fetch wait {name:13}: p50 {runs[name][-1]['p50_ms']:.0f} ms, p99 {runs[name][-1]['p99_ms']:.0f} ms")
    return {
        name: {"fetch_max_wait_s": float(waits[name]), "p99_ms_median": statistics.median(r["p99_ms"] for r in rs)}
        | {"rounds": rs}
        for name, rs in runs.items()
    }


if __name__ == "__main__":
    main()
