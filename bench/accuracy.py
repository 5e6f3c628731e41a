"""Accuracy: train, evaluate and baseline a real pretrained model with qcat's own CLI, one command per step.

    python bench/accuracy.py BASE_MODEL DATASET_DIR [--device cuda] [--epochs 8] [--batch-size 128] ...

DATASET_DIR holds train.jsonl and test.jsonl (`text`, `label`). Runs `qcat train` on train.jsonl (early stopping on
a stratified 10% split of it), `qcat eval` of the adapter on test.jsonl and `qcat baseline` (the base model
zero-shot) on test.jsonl; summary.json and the adapter's manifest go to bench/results/accuracy-<dataset>-<tag>/,
the full reports (plots, misclassified rows) to bench/reports/ (not committed: results stay small).
Last line: `accuracy=X macro_f1=Y baseline_accuracy=Z seconds_per_epoch=S`.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def qcat(*args: object) -> None:
    command = [sys.executable, "-m", "qcat", *(str(arg) for arg in args)]
    print("$ qcat " + " ".join(command[3:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base_model")
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--label-smoothing", type=float, default=None, help="default: qcat train's")
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--max-question-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="qcat train --compile")
    parser.add_argument("--batching", default="length", choices=["length", "random"])
    parser.add_argument("--tag", default="", help="suffix of the results folder (e.g. the machine)")
    parser.add_argument("--work", type=Path, default=None, help="where the adapter is written (default: /tmp)")
    args = parser.parse_args()

    name = args.dataset.resolve().name
    out = ROOT / "bench" / "results" / f"accuracy-{name}{'-' + args.tag if args.tag else ''}"
    work = args.work or Path("/tmp") / f"qcat-accuracy-{name}-{time.time_ns()}"
    work.mkdir(parents=True, exist_ok=True)
    reports = ROOT / "bench" / "reports" / out.name
    for folder in (out, reports):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    model = ("--base-model", args.base_model)
    started = time.perf_counter()
    qcat(
        "train", args.dataset / "train.jsonl", "--out", work / "adapter", *model,
        "--device", args.device, "--dtype", args.dtype, "--epochs", args.epochs, "--batch-size", args.batch_size,
        "--learning-rate", args.learning_rate, "--rank", args.rank, "--patience", args.patience,
        *(["--label-smoothing", args.label_smoothing] if args.label_smoothing is not None else []),
        "--max-question-tokens", args.max_question_tokens, "--seed", args.seed,
        *(["--compile"] if args.compile else []), "--batching", args.batching,
    )  # fmt: skip
    train_seconds = time.perf_counter() - started
    shutil.copytree(work / "adapter" / "report", reports / "train-split")
    manifest: dict[str, Any] = json.loads((work / "adapter" / "qcat-manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    labels = work / "labels.txt"
    labels.write_text("\n".join(label["name"] for label in manifest["taxonomy"]["labels"]) + "\n")
    model = (*model, "--device", args.device)
    qcat("eval", args.dataset / "test.jsonl", "--adapter", work / "adapter", "--report", reports / "test", *model)
    qcat("baseline", args.dataset / "test.jsonl", "--taxonomy", labels, "--report", reports / "baseline", *model)

    test = json.loads((reports / "test" / "metrics.json").read_text())
    baseline = json.loads((reports / "baseline" / "metrics.json").read_text())
    with (reports / "train-split" / "training.csv").open(newline="") as rows:
        epochs = list(csv.DictReader(rows))
    summary = {
        "command": "python bench/accuracy.py " + " ".join(sys.argv[1:]),
        "dataset": name,
        "test_examples": test["examples"],
        "accuracy": test["accuracy"],
        "macro_f1": test["macro_f1"],
        "expected_calibration_error": test["expected_calibration_error"],
        "baseline_accuracy": baseline["accuracy"],
        "baseline_macro_f1": baseline["macro_f1"],
        "epochs_run": len(epochs),
        # the first epoch also compiles the layers (on CUDA): reported apart, left out of the medians
        "first_epoch_seconds": float(epochs[0]["train_seconds"]),
        "seconds_per_epoch_median": statistics.median(float(row["train_seconds"]) for row in epochs[1:] or epochs),
        "train_tokens_per_s_median": statistics.median(
            float(row["train_tokens_per_s"]) for row in epochs[1:] or epochs
        ),
        "train_command_seconds": train_seconds,
        "temperature": manifest["temperature"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    print(
        f"accuracy={summary['accuracy']:.4f} macro_f1={summary['macro_f1']:.4f} "
        f"baseline_accuracy={summary['baseline_accuracy']:.4f} "
        f"seconds_per_epoch={summary['seconds_per_epoch_median']:.2f}"
    )


if __name__ == "__main__":
    main()
