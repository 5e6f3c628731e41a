"""Where a training step's time goes: torch.profiler over a few steps of qcat's own `fit()`, after compiling.

    python bench/profile_train_step.py [--device cuda] [--batch 64] [--no-compile] [--start 30] [--steps 10]
        [--cuda-graphs] [--autocast] [--out bench/results/profile-train-step-h200-b64-compiled.txt]

Random weights of Qwen3-0.6B's shape on TREC-6 (as bench/train_speed.py). Prints the wall time per step (the profiler
roughly doubles the host's share), then writes torch.profiler's tables, by host (self CPU) time and by GPU time, each
with the totals at its foot. If the host takes much longer than the GPU, the step is bound by the host.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import qcat.training.loop  # noqa: E402
from bench.engine import TAXONOMY  # noqa: E402
from bench.train_speed import base_model  # noqa: E402
from qcat.engine import EngineSpec  # noqa: E402
from qcat.pytorch.adapter import new_lora  # noqa: E402
from qcat.pytorch.engine import build_engine  # noqa: E402
from qcat.schemas.prompt import prompt_format  # noqa: E402
from qcat.settings import EngineSettings  # noqa: E402
from qcat.training.config import TrainConfig  # noqa: E402
from qcat.training.data import load_examples  # noqa: E402
from qcat.training.loop import fit, synchronize  # noqa: E402
from qcat.training.progress import RichProgress  # noqa: E402


def profiling(start: int, steps: int, out: Path, command: str) -> type[RichProgress]:
    """fit()'s progress callback, extended to profile steps start .. start+steps and write the tables to `out`."""

    class Profiled(RichProgress):
        profiler: Any = None
        started = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            super().on_step_begin(args, state, control, **kwargs)
            if state.global_step == start:
                synchronize()
                self.started = time.perf_counter()
                activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.__enter__()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            super().on_step_end(args, state, control, **kwargs)
            if self.profiler is None or state.global_step != start + steps:
                return
            synchronize()
            wall = time.perf_counter() - self.started
            self.profiler.__exit__(None, None, None)
            events = self.profiler.key_averages()
            self.profiler = None
            summary = (
                f"{steps} steps: {1e3 * wall / steps:.1f} ms a step under the profiler (GPU time: the tables' foot)"
            )
            print(summary, flush=True)
            tables = [
                f"# {command}",
                summary,
                events.table(sort_by="self_cpu_time_total", row_limit=40),
                events.table(sort_by="self_device_time_total", row_limit=25),
            ]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("\n\n".join(tables) + "\n")

    return Profiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--start", type=int, default=30, help="profile from this step (after compiling)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--cuda-graphs", action="store_true", help="qcat train --cuda-graphs")
    parser.add_argument("--autocast", action="store_true", help="qcat train --autocast")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    compiled = not args.no_compile
    tag = f"{'h200' if args.device.startswith('cuda') else 'cpu'}-b{args.batch}{'-compiled' if compiled else ''}"
    tag += "-graphs" * args.cuda_graphs + "-autocast" * args.autocast
    out = args.out or ROOT / "bench" / "results" / f"profile-train-step-{tag}.txt"
    command = "python bench/profile_train_step.py " + " ".join(sys.argv[1:])
    qcat.training.loop.RichProgress = profiling(args.start, args.steps, out, command)  # type: ignore[misc]

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    train = load_examples(ROOT / "data" / "trec" / "train.jsonl")[: args.batch * (args.start + args.steps + 2)]
    held_out = load_examples(ROOT / "data" / "trec" / "test.jsonl")[:200]
    base = base_model(None, device, dtype)
    engine = build_engine(
        base, EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "compact"), 64), EngineSettings(batch_size=256)
    )
    config = TrainConfig(
        epochs=1, batch_size=args.batch, compile=compiled, cuda_graphs=args.cuda_graphs, autocast=args.autocast
    )
    fit(new_lora(base, TAXONOMY), engine, train, held_out, Path("/tmp") / f"qcat-profile-{time.time_ns()}", config)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
