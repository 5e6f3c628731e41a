"""Training defaults across data sets: `qcat train` with no recipe flags against other recipes, several seeds each,
on TREC-6, TREC-50 (TREC's `label_fine`) and Banking77, through qcat's own CLI.

    python bench/train_defaults.py BASE_MODEL [--datasets trec6 trec50 banking77] [--seeds 3] [--parallel 4]

For each data set:
1. speed: the defaults alone on the GPU, timed from the command's start to the saved adapter (model load, data
   checks, compile or graph captures and calibration included): `seconds_to_adapter`;
2. accuracy: every recipe (the defaults first) with `--seeds` seeds, `--parallel` at a time; each adapter's
   held-out accuracy (train's own split of the training data) and its test accuracy (`qcat eval`, once). The best
   recipe is picked on held-out accuracy, never on the test set; its test mean is reported beside the defaults'.
3. the zero-shot baseline on the test set (`qcat baseline`).
Writes bench/results/train-defaults-<tag>.json (one entry per data set: `seconds_to_adapter`, `mean_accuracy`,
`best_recipe`, `best_recipe_accuracy`, every run) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RECIPES: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "b64-lr3e-4-e8-p3": ("--batch-size", "64", "--learning-rate", "3e-4", "--epochs", "8", "--patience", "3"),
    "b32-lr2e-4-e8-p3": ("--epochs", "8", "--patience", "3"),
    "b32-eager": ("--no-cuda-graphs", "--no-autocast"),
    "defaults-every-width": ("--graph-widths", "99"),
    "defaults-3-widths": ("--graph-widths", "3"),
    "defaults-4-epochs": ("--epochs", "4"),
    "defaults-4-epochs-3-widths": ("--epochs", "4", "--graph-widths", "3"),
}
"""The defaults, the fast recipe of docs/training.md, the defaults trained longer, the defaults without the GPU
speed-ups (what the defaults were before they took the fast path on CUDA), the defaults capturing a graph for every
batch width (a multiple of 8) met, as they did before `--graph-widths`, and candidates for a faster default (one
capture fewer; one epoch fewer; both), each of which must hold accuracy on every set before it may become the
default."""
DATA_OPTIONS = {"trec50": ("--conflicts", "majority")}
"""TREC-50's training set gives one question two fine labels: a data decision, the same for every recipe."""


def datasets(root: Path) -> dict[str, tuple[Path, Path]]:
    """(train, test) files per data set; TREC-50 is TREC with its fine labels."""
    trec, fine = ROOT / "data" / "trec", root / "trec50"
    fine.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        rows = [json.loads(line) for line in (trec / f"{split}.jsonl").read_text().splitlines() if line.strip()]
        lines = [json.dumps({"text": row["text"], "label": row["label_fine"]}) for row in rows]
        (fine / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    banking = ROOT / "data" / "banking77"
    return {
        "trec6": (trec / "train.jsonl", trec / "test.jsonl"),
        "trec50": (fine / "train.jsonl", fine / "test.jsonl"),
        "banking77": (banking / "train.jsonl", banking / "test.jsonl"),
    }


PHASES = "base model ready|trained|calibrated and evaluated on the held-out rows|adapter saved"
PHASE = re.compile(rf"\] ({PHASES}) .*?seconds=([\d.]+)")
CAPTURE = re.compile(r"captured a CUDA graph\s+seconds=([\d.]+) width=(\d+)")


def qcat(*args: object, log: Path) -> float:
    """Run `qcat ARGS`, its output to `log`; seconds it took. Fails loudly with the log's tail."""
    started = time.perf_counter()
    with log.open("w") as out:
        command = [sys.executable, "-m", "qcat", *map(str, args)]
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if code.returncode != 0:
        sys.exit(f"qcat {' '.join(map(str, args[:2]))} failed ({code.returncode}): {log.read_text()[-2000:]}")
    return time.perf_counter() - started


def run(
    name: str, recipe: str, seed: int, files: tuple[Path, Path], model: tuple[str, ...], work: Path
) -> dict[str, Any]:
    """Train one adapter with `recipe` and `seed`, then evaluate it once on the test set."""
    adapter, report = work / f"{name}-{recipe}-s{seed}", work / f"{name}-{recipe}-s{seed}-test"
    train_args = (
        "train",
        files[0],
        "--out",
        adapter,
        "--seed",
        seed,
        *model,
        *DATA_OPTIONS.get(name, ()),
        *RECIPES[recipe],
    )
    seconds = qcat(*train_args, log=work / f"{adapter.name}.train.log")
    qcat("eval", files[1], "--adapter", adapter, "--report", report, *model, log=work / f"{adapter.name}.eval.log")
    manifest = json.loads((adapter / "qcat-manifest.json").read_text())
    metrics = json.loads((report / "metrics.json").read_text())
    epochs = [float(row.split(",")[2]) for row in (adapter / "report" / "training.csv").read_text().split()[1:]]
    log = (work / f"{adapter.name}.train.log").read_text()
    return {
        "dataset": name,
        "recipe": recipe,
        "seed": seed,
        "seconds_to_adapter": round(seconds, 1),
        "epochs_run": len(epochs),
        "first_epoch_seconds": epochs[0],
        "later_epoch_seconds_median": statistics.median(epochs[1:] or epochs),
        "held_out_accuracy": manifest["metrics"]["accuracy"],
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        # seconds since `train` began (imports and the CLI come before it) at each of its log lines
        "phases": {event: float(seconds) for event, seconds in PHASE.findall(log)},
        "graph_captures": [(int(width), float(seconds)) for seconds, width in CAPTURE.findall(log)],
    }


def accuracy(name: str, args: argparse.Namespace, files: tuple[Path, Path], model: tuple[str, ...]) -> dict[str, Any]:
    """Every recipe with every seed, `--parallel` at a time; the best recipe chosen on held-out accuracy."""
    recipes = [recipe for recipe in args.recipes for _ in range(args.seeds)]
    seeds = [seed for _ in args.recipes for seed in range(args.seeds)]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(run, repeat(name), recipes, seeds, repeat(files), repeat(model), repeat(args.work)))
    by_recipe = {
        recipe: {
            "held_out_mean": statistics.mean(r["held_out_accuracy"] for r in runs if r["recipe"] == recipe),
            "test_mean": statistics.mean(r["test_accuracy"] for r in runs if r["recipe"] == recipe),
            "seconds_to_adapter_mean_in_parallel": statistics.mean(
                r["seconds_to_adapter"] for r in runs if r["recipe"] == recipe
            ),
        }
        for recipe in args.recipes
    }
    best = max(by_recipe, key=lambda recipe: by_recipe[recipe]["held_out_mean"])  # chosen on held-out rows
    baseline = args.work / f"{name}-baseline"
    qcat("baseline", files[1], "--report", baseline, *model, log=args.work / f"{name}-baseline.log")
    return {
        "accuracy_command": "python bench/train_defaults.py " + " ".join(sys.argv[1:]),
        "mean_accuracy": by_recipe["defaults"]["test_mean"] if "defaults" in by_recipe else None,
        "best_recipe": best,
        "best_recipe_accuracy": by_recipe[best]["test_mean"],
        "zero_shot_accuracy": json.loads((baseline / "metrics.json").read_text())["accuracy"],
        "recipes": by_recipe,
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base_model")
    parser.add_argument("--datasets", nargs="+", default=["trec6", "trec50", "banking77"])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", type=Path, default=Path("/tmp") / f"qcat-train-defaults-{time.time_ns()}")
    parser.add_argument("--tag", default="h200")
    parser.add_argument("--skip-speed", action="store_true", help="only the accuracy runs")
    parser.add_argument("--skip-accuracy", action="store_true", help="only the speed runs")
    parser.add_argument("--speed-recipes", nargs="+", default=["defaults"], help="each timed alone on the GPU")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/train-defaults-<tag>.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model = ("--base-model", args.base_model, "--device", args.device)
    files = datasets(args.work)
    out = args.out or ROOT / "bench" / "results" / f"train-defaults-{args.tag}.json"
    report_so_far = json.loads(out.read_text()) if out.exists() else {}
    report: dict[str, Any] = (
        report_so_far
        | {  # a run per data set can add to an earlier one's file
            "command": "python bench/train_defaults.py " + " ".join(sys.argv[1:]),
            "recipes": RECIPES,
        }
    )
    for name in args.datasets:
        entry: dict[str, Any] = report.get(name, {})  # a speed run and an accuracy run can fill one entry in turn
        if not args.skip_speed:  # alone on the GPU: this is the figure a user waits for
            speed = {recipe: run(name, recipe, 100, files[name], model, args.work) for recipe in args.speed_recipes}
            entry["speed_command"] = report["command"]
            entry["speed_runs"] = entry.get("speed_runs", {}) | speed
            if "defaults" in speed:
                entry["seconds_to_adapter"] = speed["defaults"]["seconds_to_adapter"]
        if not args.skip_accuracy:
            entry |= accuracy(name, args, files[name], model)
        report[name] = entry
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({name: {k: v for k, v in entry.items() if k not in ("runs", "speed_runs")}}), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
