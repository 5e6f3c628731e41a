"""What shadow scoring costs and what it changes, side by side in one run, through the real (embedded) broker:
the worker with no candidate in shadow, with one scoring every event, and with one scoring a sampled 10%, in
alternating rounds (this machine drifts); each run's routes are compared with the no-shadow run's, event by event.

    python bench/shadow.py [--events 2000] [--rounds 3]                        # CPU: the built-in model
    QCAT_DEVICE=cuda python bench/shadow.py --base-model DIR --events 20000    # a GPU (a registry made on DIR)

The serving adapter and the candidate are real LoRA adapters (untrained: speed does not depend on their values) in
a registry, loaded as the worker loads any version. Writes bench/results/shadow.json: events/s of each mode (steady
state, `bench.stream.steady_rate`), `full_shadow_vs_none`, `sampled_10pct_vs_none`, and `routing_unchanged`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stream import (  # noqa: E402
    RUN_NUMBERS,
    drain,
    preload,
    start,
    steady_rate,
    worker_env,
)
from qcat.pytorch.model import load_base_model, private_copy, resolve_device  # noqa: E402
from qcat.registry import Registry  # noqa: E402
from qcat.schemas.taxonomy import Taxonomy  # noqa: E402
from qcat.shadow import set_shadow  # noqa: E402
from qcat.worker.broker import EmbeddedBroker, free_port  # noqa: E402
from qcat.worker.processes import terminate  # noqa: E402
from tests.helpers.adapters import untrained_adapter  # noqa: E402
from tests.integration.kafka import WorkerProcess  # noqa: E402

TAXONOMY = Taxonomy.from_file(ROOT / "qcat" / "assets" / "trec6.json")
MODES = {"none": None, "full": 1.0, "sampled_10pct": 0.1}


def registry_of(base_model: str, folder: Path) -> Registry:
    """A registry whose current version serves, and a second version to put in shadow."""
    device = resolve_device("auto")
    base = load_base_model(base_model, device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    registry = Registry(folder / "registry")
    for version in ("serving", "candidate"):
        registry.add(untrained_adapter(private_copy(base), TAXONOMY, version, folder / version))
    registry.promote("serving", force=True)
    return registry


def run(
    address: str, tmp: Path, registry: Registry, mode: str, events: int, settings: dict[str, str]
) -> dict[str, Any]:
    """A fresh worker with the mode's shadow, then `events` produced at once; events/s and each event's route."""
    sample = MODES[mode]
    set_shadow(registry, "candidate" if sample else None, sample or 1.0)
    prefix = f"bench-shadow-{mode}-{next(RUN_NUMBERS)}"
    web_port = free_port()
    env = worker_env(address, prefix, tmp / prefix, web_port, {"QCAT_REGISTRY": registry.url, **settings})
    process = start([sys.executable, "-m", "qcat", "worker"], env, tmp / f"{prefix}.log", web_port)
    try:
        if sample:  # the candidate is loaded before the first event is produced
            probe = WorkerProcess(address, prefix, tmp)
            probe.web_port = web_port
            probe.wait_for_metric("qcat_shadow", 1, timeout=300)
        asyncio.run(preload(address, f"{prefix}.incoming", events))
        stamps, values = asyncio.run(drain(address, f"{prefix}.categorized", events, 900, parse=True))
    finally:
        terminate(process)
    routes = {value["event_id"]: (value["label"], value["routed"], value["review_reason"]) for value in values}
    rate = steady_rate(stamps)
    print(f"shadow {mode:14} {events} events  {rate:9.1f} events/s", flush=True)
    return {"mode": mode, "events": events, "events_per_s": rate, "routes": routes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="tiny-qwen3")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shadow.json")
    args = parser.parse_args()
    settings = {"QCAT_MAX_BATCH": str(args.max_batch)} if args.max_batch else {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qcat-shadow-") as folder, EmbeddedBroker() as broker:
        tmp = Path(folder)
        registry = registry_of(args.base_model, tmp)
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                runs[mode].append(run(broker.address, tmp, registry, mode, args.events, settings))
    reference = runs["none"][0]["routes"]
    unchanged = all(run["routes"] == reference for mode_runs in runs.values() for run in mode_runs)

    def ratio(mode: str) -> float:
        return float(
            statistics.median(
                shadow["events_per_s"] / none["events_per_s"]
                for shadow, none in zip(runs[mode], runs["none"], strict=True)
            )
        )

    report = {
        "command": "python bench/shadow.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (2 cores)",
        "base_model": args.base_model,
        "events": args.events,
        "routing_unchanged": unchanged,
        "full_shadow_vs_none": ratio("full"),
        "sampled_10pct_vs_none": ratio("sampled_10pct"),
        "events_per_s": {mode: [round(r["events_per_s"], 1) for r in rs] for mode, rs in runs.items()},
        "seconds": round(time.perf_counter() - started),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
