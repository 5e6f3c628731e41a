"""Where the engine's time goes on a GPU: one micro-batch's forward pass under the torch profiler, and the engine's
speed against the padded-token budget per forward pass (`batch_tokens`: smaller budgets cut padding but add passes).

Random weights of Qwen3-0.6B's shape over TREC test questions, eager, as the worker serves by default.

    python bench/engine_profile.py [--device cuda] [--batch-sizes 512 2048] [--out FILE]
    python bench/engine_profile.py --graphs [--passes 512 256 128 64]   # CUDA graphs against eager, side by side

Prints, per batch size, the wall time of `classify`, of the forward passes alone and of tokenizing, the GPU's busy
time and the kernels that take it; then questions/s for each `batch_tokens` budget. With `--graphs`, instead: the
eager engine (one pass per micro-batch, as served today) against `QCAT_CUDA_GRAPHS` with passes of `--passes`
questions, in alternating rounds, with the largest difference of their logits. Writes the text to --out.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine import build_model, make_engine, sync, timed  # noqa: E402
from qcat.logs import configure_logging  # noqa: E402


def mean_seconds(device: torch.device, fn: Callable[[Any], Any], argument: Any, repeats: int = 5) -> float:
    """`fn(argument)`'s mean wall time over `repeats` calls in a row."""
    return timed(lambda: [fn(argument) for _ in range(repeats)], device) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--budgets", type=int, nargs="+", default=[32768, 16384, 8192, 4096, 2048])
    parser.add_argument("--graphs", action="store_true", help="CUDA graphs against eager, nothing else")
    parser.add_argument("--passes", type=int, nargs="+", default=[512, 256, 128, 64])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    configure_logging(json=False, level="WARNING")
    device = torch.device(args.device)
    questions = [json.loads(line)["text"] for line in (ROOT / "data" / "trec" / "test.jsonl").open()] * 8
    model, tokenizer = build_model(device, torch.bfloat16)
    text = io.StringIO()
    with redirect_stdout(text):
        print(f"# python bench/engine_profile.py {' '.join(sys.argv[1:])}  ({torch.__version__})")
        if args.graphs:
            graphs_against_eager(model, tokenizer, questions, args, device)
        else:
            profile_eager(model, tokenizer, questions, args, device)
    sys.stdout.write(text.getvalue())
    if args.out:
        args.out.write_text(text.getvalue())


def graphs_against_eager(model: Any, tokenizer: Any, questions: list[str], args: Any, device: torch.device) -> None:
    """Eager with one pass per micro-batch (the served default) against graphed passes of each size, 3 rounds."""
    largest = max(args.batch_sizes)
    eager = make_engine(model, tokenizer, "compact", None, batch_size=largest)
    graphed = {
        size: make_engine(model, tokenizer, "compact", None, batch_size=size, cuda_graphs=True) for size in args.passes
    }
    for batch_size in args.batch_sizes:
        batch = questions[:batch_size]
        ids = eager.encode(batch).ids
        reference = eager.logits(ids)
        started = time.perf_counter()
        for engine in graphed.values():  # captures every shape this batch needs, timed apart
            engine.classify(batch)
        capture = time.perf_counter() - started
        differences = {size: float(abs(engine.logits(ids) - reference).max()) for size, engine in graphed.items()}
        rounds: dict[str, list[float]] = {"eager": [], **{f"graphs, passes of {size}": [] for size in graphed}}
        for _ in range(3):
            rounds["eager"].append(batch_size / mean_seconds(device, eager.classify, batch))
            for size, engine in graphed.items():
                rate = batch_size / mean_seconds(device, engine.classify, batch)
                rounds[f"graphs, passes of {size}"].append(rate)
        print(f"\nmicro-batch {batch_size} (captures for it: {capture:.1f} s):")
        for name, rates in rounds.items():
            size = int(name.rsplit(" ", 1)[1]) if name != "eager" else None
            note = f", max |logit difference| {differences[size]:.3g}" if size else ""
            print(
                f"  {name:22} {statistics.median(rates):7.0f} q/s (rounds {', '.join(f'{r:.0f}' for r in rates)}), "
                f"{statistics.median(rates) / statistics.median(rounds['eager']):.2f}x eager{note}"
            )


def profile_eager(model: Any, tokenizer: Any, questions: list[str], args: Any, device: torch.device) -> None:
    """The profile of one pass per batch size, then the padded-token budgets."""
    engine = make_engine(model, tokenizer, "compact", None, batch_size=max(args.batch_sizes))
    for size in args.batch_sizes:
        batch = questions[:size]
        for _ in range(3):
            engine.classify(batch)
        ids = engine.encode(batch).ids
        classify = mean_seconds(device, engine.classify, batch)
        forward = mean_seconds(device, engine.logits, ids)
        encode = mean_seconds(device, engine.encode, batch)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as profiled:
            engine.logits(ids)
            sync(device)
        events = profiled.key_averages()
        busy = sum(event.self_device_time_total for event in events) / 1e3
        print(
            f"\nbatch {size}: classify {classify * 1e3:.1f} ms, forward passes alone {forward * 1e3:.1f} ms, "
            f"tokenizing {encode * 1e3:.1f} ms, GPU busy {busy:.1f} ms"
        )
        print(events.table(sort_by="self_cuda_time_total", row_limit=12, max_name_column_width=60))
    print("\npadded-token budget per forward pass (batch_tokens):")
    for budget in args.budgets:
        engine = make_engine(model, tokenizer, "compact", budget, batch_size=max(args.batch_sizes))
        for size in args.batch_sizes:
            batch = questions[:size]
            for _ in range(3):
                engine.classify(batch)
            lengths = [len(row) for row in engine.encode(batch).ids]
            chunks = engine.chunks(lengths)
            padded = sum(len(chunk) * max(lengths[i] for i in chunk) for chunk in chunks)
            seconds = mean_seconds(device, engine.classify, batch, repeats=6)
            print(
                f"batch_tokens {budget:6d}, batch {size:5d}: {size / seconds:7.0f} q/s, {seconds * 1e3:6.1f} ms, "
                f"{len(chunks)} passes, padded / real tokens {padded / sum(lengths):.2f}"
            )


if __name__ == "__main__":
    main()
