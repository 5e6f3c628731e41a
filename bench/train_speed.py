"""Training speed: seconds per TREC-6 epoch and tokens/s, a plain recipe vs qcat's, side by side in one run.

"plain" is the seed recipe's loop (batch 32, random order); "qcat-bN" is qcat's path with larger, length-grouped
batches (`TrainConfig.batching`; `--batching` adds the other orders as "qcat-bN-ORDER"); "qcat-bN-compiled" adds
compiled decoder layers (`qcat train --compile`); `--cuda-graphs off on` and `--autocast off on` add each variant with
the decoder replayed as CUDA graphs ("-graphs", `qcat train --cuda-graphs`) and with bf16 autocast ("-autocast").
All run qcat's own `fit()` (transformers' Trainer, LoRA on all linear layers, bf16 on CUDA) on a random-weight model
of Qwen3-0.6B's exact shape (speed does not depend on weight values), or on `--base-model` (a hub id, local dir or
.gguf file). Epoch time excludes evaluation; `seconds_per_epoch` is the median of the epochs after the first, which
also pays for compiling (`first_epoch_seconds`).

    python bench/train_speed.py [--quick] [--device cuda] [--epochs 3] [--batch 128 256] [--compiled-batch 256 512]
        [--batching length random] [--cuda-graphs off on] [--autocast off on]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.engine import TAXONOMY, build_model, machine  # noqa: E402
from qcat.engine import EngineSpec  # noqa: E402
from qcat.logs import configure_logging  # noqa: E402
from qcat.pytorch.adapter import new_lora  # noqa: E402
from qcat.pytorch.engine import build_engine  # noqa: E402
from qcat.pytorch.model import LoadedModel, fingerprint, load_base_model  # noqa: E402
from qcat.schemas.prompt import prompt_format  # noqa: E402
from qcat.settings import EngineSettings  # noqa: E402
from qcat.training.config import Batching, TrainConfig  # noqa: E402
from qcat.training.data import Example, load_examples  # noqa: E402
from qcat.training.loop import fit  # noqa: E402


def base_model(name: str | None, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    if name:
        return load_base_model(name, device=device, dtype=dtype)
    model, tokenizer = build_model(device, dtype)
    return LoadedModel(model.train(), tokenizer, "random-qwen3-0.6b-shape", fingerprint(model), offline_builtin=True)


def measure(
    name: str | None,
    device: torch.device,
    dtype: torch.dtype,
    train: list[Example],
    held_out: list[Example],
    config: TrainConfig,
    work: Path,
) -> dict[str, Any]:
    torch.manual_seed(config.seed)
    base = base_model(name, device, dtype)
    model = new_lora(base, TAXONOMY)
    engine = build_engine(
        base, EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "compact"), 64), EngineSettings(batch_size=256)
    )
    result = fit(model, engine, train, held_out, work, config)
    del model, engine, base
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "batch_size": config.batch_size,
        "batching": config.batching,
        "compiled": config.compile,
        "cuda_graphs": config.cuda_graphs,
        "autocast": config.autocast,
        "epochs": result["epochs_run"],
        "first_epoch_seconds": result["first_epoch_seconds"],
        "seconds_per_epoch": result["train_seconds_per_epoch"],
        "tokens_per_s": result["train_tokens_per_s"],
        "eval_accuracy": result.get("eval_accuracy"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64 training questions: about two minutes on 2 CPU cores")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--base-model", default=None, help="default: random weights of Qwen3-0.6B's shape")
    parser.add_argument("--epochs", type=int, default=3, help="per variant; plain runs one (it is the slow one)")
    parser.add_argument("--batch", type=int, nargs="*", default=[128], help="qcat batch sizes, eager")
    parser.add_argument("--compiled-batch", type=int, nargs="*", default=[], help="qcat batch sizes, compiled")
    parser.add_argument("--batching", nargs="+", default=["length"], choices=get_args(Batching))
    parser.add_argument("--cuda-graphs", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--autocast", nargs="+", default=["off"], choices=["off", "on"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    configure_logging(json=False, level="WARNING")

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    train = load_examples(ROOT / "data" / "trec" / "train.jsonl")
    held_out = load_examples(ROOT / "data" / "trec" / "test.jsonl")[:200]
    if args.quick:
        train, held_out = train[:64], held_out[:16]
    plain = TrainConfig(epochs=1, batch_size=32, batching="random", patience=args.epochs)
    variants = {"plain": plain}
    sizes = [(size, False) for size in args.batch] + [(size, True) for size in args.compiled_batch]
    for batching, graphs, autocast, (size, compiled) in itertools.product(
        args.batching, args.cuda_graphs, args.autocast, sizes
    ):
        label = f"qcat-b{size}" + "-compiled" * compiled + "-graphs" * (graphs == "on")
        label += "-autocast" * (autocast == "on") + ("" if batching == "length" else f"-{batching}")
        variants[label] = replace(
            plain,
            epochs=args.epochs,
            batch_size=size,
            batching=batching,
            compile=compiled,
            cuda_graphs=graphs == "on",
            autocast=autocast == "on",
        )
    work = Path("/tmp") / f"qcat-train-speed-{time.time_ns()}"
    results = {}
    for label, config in variants.items():
        results[label] = measure(args.base_model, device, dtype, train, held_out, config, work / label)
        row = results[label]
        print(
            f"{label:36} batch {row['batch_size']:>4} {row['batching']:7}: "
            f"first epoch {row['first_epoch_seconds']:7.2f} s, then "
            f"{row['seconds_per_epoch']:7.2f} s/epoch {row['tokens_per_s']:10.0f} tokens/s",
            flush=True,
        )
    best = min(results, key=lambda label: results[label]["seconds_per_epoch"])
    for row in results.values():
        row["speedup_vs_plain"] = results["plain"]["seconds_per_epoch"] / row["seconds_per_epoch"]
    speedup = results[best]["speedup_vs_plain"]
    tag = "h200" if device.type == "cuda" else "cpu"
    out = args.out or ROOT / "bench" / "results" / f"train-{tag}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python bench/train_speed.py " + " ".join(sys.argv[1:]),
        "machine": machine(device),
        "model": args.base_model or "random weights, Qwen3-0.6B shape",
        "dtype": str(dtype),
        "train_questions": len(train),
        "results": results,
        "speedup": speedup,
        "speedup_of": best,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    print(f"seconds_per_epoch={results[best]['seconds_per_epoch']:.2f} speedup_vs_plain={speedup:.1f}")


if __name__ == "__main__":
    main()
