"""The accuracy a serving precision costs: `qcat eval` of trained adapters on their test sets, unquantized and at
`--quantize`, on one device, through qcat's own CLI.

    python bench/quantized_accuracy.py BASE_MODEL --quantize fp8 --device cuda trec6=ADAPTER banking77=ADAPTER
    python bench/quantized_accuracy.py BASE_MODEL --quantize int8 --device cpu trec6=ADAPTER banking77=ADAPTER

Each adapter is evaluated twice on its data set's test file (the same file train-defaults tests on): with
`--quantize none` and with the precision asked for, on the same device, so the difference is the precision's alone.
Adds `<precision>` to bench/results/quantized-accuracy.json: per data set, both accuracies and macro-F1s, the points
lost, and how many test answers changed label.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.train_defaults import datasets, qcat  # noqa: E402 - the same data sets and runner

OUT = ROOT / "bench" / "results" / "quantized-accuracy.json"


def evaluate(name: str, adapter: Path, test: Path, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    report = args.work / f"{name}-{precision}"
    model = ("--base-model", args.base_model, "--device", args.device)
    seconds = qcat("eval", test, "--adapter", adapter, "--report", report, "--quantize", precision, *model,
                   log=args.work / f"{name}-{precision}.log")  # fmt: skip
    metrics = json.loads((report / "metrics.json").read_text())
    with (report / "predictions.csv").open(newline="") as handle:
        predicted = [row["predicted"] for row in csv.DictReader(handle)]
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "seconds": round(seconds, 1),
            "predicted": predicted}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base_model")
    parser.add_argument("adapters", nargs="+", help="DATASET=ADAPTER_DIR, DATASET one of trec6, trec50, banking77")
    parser.add_argument("--quantize", required=True, choices=["int8", "fp8"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", type=Path, default=Path("/tmp") / f"qcat-quantized-{time.time_ns()}")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    files = datasets(args.work)
    results: dict[str, Any] = {"command": "python bench/quantized_accuracy.py " + " ".join(sys.argv[1:])}
    for pair in args.adapters:
        name, adapter = pair.split("=", 1)
        plain, quantized = (evaluate(name, Path(adapter), files[name][1], p, args) for p in ("none", args.quantize))
        changed = sum(a != b for a, b in zip(plain.pop("predicted"), quantized.pop("predicted"), strict=True))
        results[name] = {
            "none": plain,
            args.quantize: quantized,
            "points_lost": round(100 * (plain["accuracy"] - quantized["accuracy"]), 2),
            "answers_changed": changed,
        }
        print(json.dumps({name: results[name]}), flush=True)
    report = json.loads(args.out.read_text()) if args.out.exists() else {}
    args.out.write_text(json.dumps(report | {args.quantize: results}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
