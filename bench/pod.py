"""One pod per GPU, measured end to end in one run: the engine alone, then one `qcat worker` (an engine core and its
front-ends) through the embedded broker on the same machine: throughput, latency at half and quarter load, cold
start, a hot swap under load, and what shadow scoring costs there.

    QCAT_DEVICE=cuda python bench/pod.py [--events 40960] [--frontends 4] [--out bench/results/pipeline-gpu.json]

The model is Qwen3-0.6B's shape with random weights (speed does not depend on their values), saved once so that the
worker loads it as any base model, with two real (untrained) LoRA adapters in a registry: the worker serves the first,
the swap promotes the second, shadow scoring puts the second beside the first. Questions are TREC's. `budget_ms` is
the worker's max_wait plus twice the engine's batch time alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine import build_model, matmul_ceiling, run_engine  # noqa: E402
from bench.stream import QUESTIONS, drain, paced, preload, quantile, steady_rate, worker_env  # noqa: E402
from qcat.pytorch.engine import load_engine  # noqa: E402
from qcat.pytorch.model import load_base_model, private_copy  # noqa: E402
from qcat.registry import Registry  # noqa: E402
from qcat.schemas.taxonomy import Taxonomy  # noqa: E402
from qcat.settings import EngineSettings  # noqa: E402
from qcat.worker.broker import EmbeddedBroker, free_port  # noqa: E402
from qcat.worker.processes import terminate, wait_ready  # noqa: E402
from tests.helpers.adapters import untrained_adapter  # noqa: E402

TAXONOMY = Taxonomy.from_file(ROOT / "qcat" / "assets" / "trec6.json")
MAX_WAIT = 0.05


def prepare(work: Path) -> tuple[Path, Registry]:
    model, tokenizer = build_model(torch.device("cpu"), torch.bfloat16)
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    base = load_base_model(str(work / "model"), device=torch.device("cpu"), dtype=torch.bfloat16)
    registry = Registry(work / "registry")
    for version in ("v1", "v2"):
        registry.add(untrained_adapter(private_copy(base), TAXONOMY, version, work / version))
    registry.promote("v1", force=True)
    return work / "model", registry


def engine_alone(model: Path, registry: Registry, batch: int, events: int, device: str) -> dict[str, Any]:
    settings = EngineSettings(
        base_model=str(model), adapter=registry.path("v1"), serving=True, batch_size=batch, device=device
    )
    engine = load_engine(settings)
    cuda = device.startswith("cuda")
    ceiling = matmul_ceiling(torch.device(device), torch.bfloat16, n=8192 if cuda else 1024, repeats=20 if cuda else 3)
    questions = (QUESTIONS * (1 + events // len(QUESTIONS)))[:events]
    result = run_engine(engine, questions, batch, ceiling)
    del engine
    if cuda:
        torch.cuda.empty_cache()
    return result


def categorized(values: list[dict[str, Any]], ids: set[str]) -> list[dict[str, Any]]:
    return [v for v in values if v["event_id"] in ids]


async def paced_run(address: str, prefix: str, count: int, rate: float, first: int, during: Any = None) -> list[Any]:
    """Send `count` events (ids b<first>...) at `rate` per second; read their outputs; `during` runs meanwhile."""
    topic = f"{prefix}.categorized"
    reader = asyncio.create_task(drain(address, topic, first + count, timeout=300, parse=True, distinct=True))
    sender = asyncio.create_task(paced(address, f"{prefix}.incoming", count, rate, first=first))
    if during is not None:
        await during()
    await sender
    return (await reader)[1]


def stamp(value: dict[str, Any]) -> float:
    return datetime.fromisoformat(value["categorized_at"]).timestamp()


def latency(values: list[dict[str, Any]]) -> dict[str, float]:
    ordered = sorted(v["latency_ms"] for v in values)
    return {"p50_ms": statistics.median(ordered), "p99_ms": quantile(ordered, 0.99), "events": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=40960)
    parser.add_argument("--frontends", type=int, default=4)
    parser.add_argument("--max-batch", type=int, default=512)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the benchmark itself, not a figure")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline-gpu.json")
    parser.add_argument("--shadow-only", action="store_true", help="only the shadow costs (no engine alone)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qcat-pod-"))
    model, registry = prepare(work)
    report: dict[str, Any] = {
        "command": "python bench/pod.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "pods": 1,
        "frontends": args.frontends,
    }
    if not args.shadow_only:
        alone = engine_alone(model, registry, args.max_batch, min(args.events, 16384), args.device)
        print(f"engine alone: {alone['questions_per_s']:.0f} q/s, mfu {alone['mfu']:.1%}", flush=True)
        report |= {
            "engine_questions_per_s": alone["questions_per_s"],
            "mfu_whole_call": alone["mfu"],
            "mfu_core_call": alone["forward_only_mfu"],
            "budget_ms": 1000 * (MAX_WAIT + 2 * alone["p50_batch_ms"] / 1000),
            "engine_alone": alone,
        }
    with EmbeddedBroker() as broker:
        prefix, port = "bench-pod", free_port()
        settings = {
            "QCAT_BASE_MODEL": str(model),
            "QCAT_REGISTRY": registry.url,
            "QCAT_FRONTENDS": str(args.frontends),
            "QCAT_MAX_BATCH": str(args.max_batch),
            "QCAT_MAX_WAIT": str(MAX_WAIT),
            "QCAT_REGISTRY_POLL_INTERVAL": "3600",
            "QCAT_PARTITIONS": str(4 * args.frontends),
            "QCAT_DEVICE": args.device,
        }
        env = worker_env(broker.address, prefix, work / "data", port, settings)
        env["QCAT_PARTITIONS"] = settings["QCAT_PARTITIONS"]
        started = time.monotonic()
        with (work / "pod.log").open("wb") as log:
            pod = subprocess.Popen([sys.executable, "-m", "qcat", "worker"], env=env, stdout=log, stderr=log)
        try:
            wait_ready(pod, port, work / "pod.log", timeout=600)
            report["cold_start_s"] = time.monotonic() - started
            time.sleep(5)  # the front-ends settle in the group
            if args.shadow_only:
                report["shadow"] = shadow_costs(broker.address, prefix, registry, env, args.events, 0)
                args.out.write_text(json.dumps(report, indent=2) + "\n")
                print(json.dumps(report, indent=2))
                return
            asyncio.run(preload(broker.address, f"{prefix}.incoming", args.events))
            stamps, _ = asyncio.run(drain(broker.address, f"{prefix}.categorized", args.events, 600))
            rate = steady_rate(stamps)
            report |= {"events_per_s": rate, "worker_vs_engine": rate / alone["questions_per_s"]}
            print(f"pod: {rate:.0f} events/s = {report['worker_vs_engine']:.2f} of the engine alone", flush=True)
            sent = args.events
            for name, share in (("half", 0.5), ("quarter", 0.25)):
                count = int(rate * share * 15)
                values = asyncio.run(paced_run(broker.address, prefix, count, rate * share, sent))
                report[f"latency_{name}_load"] = latency(
                    categorized(values, {f"b{i}" for i in range(sent, sent + count)})
                )
                report[f"p99_ms_{name}_load"] = report[f"latency_{name}_load"]["p99_ms"]
                print(f"{name} load: {report[f'latency_{name}_load']}", flush=True)
                sent += count
            count, swap_at = int(rate * 0.5 * 20), {}

            async def swap() -> None:
                await asyncio.sleep(5)
                swap_at["t"] = time.time()
                promote = ["adapters", "promote", "v2", "--registry", registry.url, "--force", "--announce"]
                await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "qcat", *promote], env=env, check=True)

            values = asyncio.run(paced_run(broker.address, prefix, count, rate * 0.5, sent, swap))
            ids = {f"b{i}" for i in range(sent, sent + count)}
            mine = categorized(values, ids)
            window = [v for v in mine if 0 <= stamp(v) - swap_at["t"] <= 10]
            report["swap_lost"] = len(ids - {v["event_id"] for v in mine})
            report["swap_p99_ms"] = latency(window or mine)["p99_ms"]
            report["swap_served_after"] = sorted({v["adapter_version"] for v in sorted(mine, key=stamp)[-100:]})
            sent += count
            print(f"swap: lost {report['swap_lost']}, p99 {report['swap_p99_ms']:.0f} ms", flush=True)
            report["shadow"] = shadow_costs(broker.address, prefix, registry, env, args.events, sent)
        finally:
            terminate(pod, timeout=60)
    report["targets"] = {
        "worker_vs_engine_ge_0.95": report.get("worker_vs_engine", 0) >= 0.95,
        "p99_half_le_budget": report.get("p99_ms_half_load", 1e9) <= report["budget_ms"],
        "p99_quarter_le_budget": report.get("p99_ms_quarter_load", 1e9) <= report["budget_ms"],
        "mfu_whole_call_ge_0.45": report["mfu_whole_call"] >= 0.45,
        "cold_start_le_60s": report.get("cold_start_s", 1e9) <= 60,
        "swap_lost_0": report.get("swap_lost") == 0,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "engine_alone"}, indent=2))


def shadow_costs(
    address: str, prefix: str, registry: Registry, env: dict[str, str], events: int, sent: int
) -> dict[str, Any]:
    """Throughput with no shadow, v2 scoring every event, and v2 scoring 10%, on the same running pod."""
    rates = {}
    for mode, sample in (("none", None), ("full", "1.0"), ("sampled_10pct", "0.1")):
        command = ["adapters", "shadow", "--registry", registry.url, "--announce"]
        command += ["v1", "--sample", sample] if sample else ["--stop"]
        subprocess.run([sys.executable, "-m", "qcat", *command], env=env, check=True)
        time.sleep(15 if sample else 2)  # the front-ends load the candidate (the core once)
        topic = f"{prefix}.categorized"
        asyncio.run(preload_from(address, f"{prefix}.incoming", sent, events))
        stamps, _ = asyncio.run(drain(address, topic, sent + events, 600))
        rates[mode] = steady_rate(stamps[sent:])
        sent += events
        print(f"shadow {mode}: {rates[mode]:.0f} events/s", flush=True)
    return {
        "events_per_s": rates,
        "full_shadow_vs_none": rates["full"] / rates["none"],
        "sampled_10pct_vs_none": rates["sampled_10pct"] / rates["none"],
    }


async def preload_from(address: str, topic: str, first: int, count: int) -> None:
    from aiokafka import AIOKafkaProducer

    from bench.stream import event

    producer = AIOKafkaProducer(bootstrap_servers=address, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topic, event(i), key=f"b{i}".encode()) for i in range(first, first + count)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


if __name__ == "__main__":
    main()
