"""Freed-memory reuse on the CPU (qcat/pytorch/cpu.py, `QCAT_KEEP_FREED_MEMORY`), side by side.

The engine at one batch size on a random-weight model of Qwen3-0.6B's exact shape, each run in a fresh process
(the setting is process-wide), alternating glibc's default and qcat's setting round by round; every run reports
questions/s and page faults per batch. Prints a table and, last, `speedup=X faults_per_batch_default=N
faults_per_batch_keep=M` (the median of the rounds' paired ratios); writes bench/results/cpu-memory.json.

    python bench/cpu_memory.py [--rounds 3] [--batches 8] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTIONS = [json.loads(line)["text"] for line in (ROOT / "data" / "trec" / "test.jsonl").open()]


def child(keep: bool, batch_size: int, batches: int) -> dict[str, Any]:
    """One run in this process: build the engine through the worker's own factory, warm up, time `batches`."""
    from bench.models import qwen3_shape
    from qcat.settings import EngineSettings

    engine = qwen3_shape(EngineSettings(batch_size=batch_size, keep_freed_memory=keep))
    texts = [QUESTIONS[i % len(QUESTIONS)] for i in range(batch_size * (batches + 1))]
    engine.classify(texts[:batch_size])
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    for i in range(1, batches + 1):
        engine.classify(texts[i * batch_size : (i + 1) * batch_size])
    seconds = time.perf_counter() - started
    return {
        "questions_per_s": batch_size * batches / seconds,
        "page_faults_per_batch": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / batches,
    }


def run(keep: bool, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", "keep" if keep else "default"]
    command += ["--batch-size", str(args.batch_size), "--batches", str(args.batches)]
    output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--child", choices=["default", "keep"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cpu-memory.json")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child == "keep", args.batch_size, args.batches)))
        return
    rounds = []
    for index in range(args.rounds):
        pair = {"default": run(False, args), "keep": run(True, args)}
        pair["speedup"] = pair["keep"]["questions_per_s"] / pair["default"]["questions_per_s"]
        rounds.append(pair)
        print(
            f"round {index + 1}: glibc default {pair['default']['questions_per_s']:5.1f} q/s "
            f"({pair['default']['page_faults_per_batch']:9,.0f} page faults a batch) | kept "
            f"{pair['keep']['questions_per_s']:5.1f} q/s ({pair['keep']['page_faults_per_batch']:7,.0f}) | "
            f"{pair['speedup']:.2f}x",
            flush=True,
        )
    summary = {
        "speedup_median": statistics.median(pair["speedup"] for pair in rounds),
        "faults_per_batch_default": statistics.median(p["default"]["page_faults_per_batch"] for p in rounds),
        "faults_per_batch_keep": statistics.median(p["keep"]["page_faults_per_batch"] for p in rounds),
    }
    report = {"command": "python bench/cpu_memory.py " + " ".join(sys.argv[1:]), **vars(args), "rounds": rounds}
    report = {**report, **summary, "out": str(args.out.relative_to(ROOT))}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    print(
        f"speedup={summary['speedup_median']:.2f} faults_per_batch_default={summary['faults_per_batch_default']:.0f} "
        f"faults_per_batch_keep={summary['faults_per_batch_keep']:.0f}"
    )


if __name__ == "__main__":
    main()
