"""Open-set intent classification on Banking77 through qcat's own CLI, by the open-intent protocol (Zhang et al.,
AAAI 2021): train on 25%, 50% or 75% of the intents (their training rows only), test on the whole test set with the
other intents as one unknown class, over several class splits (`labels = sorted(...)`, `random.Random(split).shuffle`,
the first share known).

    python bench/open_set_select.py BASE_MODEL --variant NAME="FLAGS" ...   # selection, training data only
    python bench/open_set.py BASE_MODEL [--ratios 0.25 0.5 0.75 1.0] [--splits 3] [-- qcat train options]

The selection never reads the test set: class splits 100, 101, ... of the training data, the known intents' rows split
80/20 (train / validation), the unknown intents' rows as validation unknowns (as many as the known ones, as in the test
set at 50%). Each `--variant NAME="FLAGS"` trains once per split; from the adapter's own held-out distances the
boundary is redrawn at several known coverages, and each (variant, coverage) is scored on the validation rows. The
best by mean open-set accuracy and macro-F1 is written (bench/results/open-set-selection.json) with its flags.

The test runs are `qcat train` on the known intents' training rows (threshold and boundary chosen on its own held-out
10% of them) and `qcat eval` on the full test set. Ratio 1.0 is the closed set: argmax accuracy, with the coverage and
precision of routed answers at the adapter's policy. Writes bench/results/open-set-banking77.json keyed by ratio
("0.25", ...), each with mean `accuracy` and `macro_f1` (fractions), every split's figures and the command, plus
`closed_set_accuracy`, and the trade-off plot beside it.

A run finished under --work is kept there and not repeated: a call cut short resumes with the same --work.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.train_defaults import qcat  # noqa: E402 - the same runner: output to a log, loud failure
from qcat.routing import RoutingPolicy  # noqa: E402
from qcat.schemas.taxonomy import Taxonomy  # noqa: E402
from qcat.training.data import Scored  # noqa: E402
from qcat.training.open_set import open_set_metrics  # noqa: E402

DATA = ROOT / "data" / "banking77"
BEST_PUBLISHED = {"0.25": (86.14, 77.01), "0.5": (83.78, 84.93), "0.75": (84.40, 88.39)}
"""The best published Banking77 rows, (accuracy, macro-F1) in percent, BERT-base: KNNCL at 25%, Adaptive-Boundary
(tgargiani, NLDB 2022) at 50% and 75%; TEXTOIR's re-runs."""
COVERAGES = (0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
SELECTABLE = (0.97, 0.98, 0.99)
"""Known coverages a default may take: the closed set must still route 95% of its questions."""


def rows(split: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines() if line.strip()]


def known_intents(labels: list[str], ratio: float, split: int) -> set[str]:
    shuffled = sorted(labels)
    random.Random(split).shuffle(shuffled)
    return set(shuffled[: round(ratio * len(shuffled))])


def run(ratio: float, split: int, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """One class split: train on its known intents, evaluate on the whole test set."""
    train = rows("train")
    known = known_intents(sorted({row["label"] for row in train}), ratio, split)
    name = f"r{ratio}-s{split}"
    data = args.work / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in train if row["label"] in known))
    adapter, report, saved = args.work / name, args.work / f"{name}-test", args.work / f"{name}.json"
    if saved.exists():  # finished by an earlier call with the same --work (a device call has a time limit)
        return dict(json.loads(saved.read_text()))
    shutil.rmtree(adapter, ignore_errors=True)  # left half-done by a call that ran out of time
    shutil.rmtree(report, ignore_errors=True)
    model = ("--base-model", args.base_model, "--device", args.device)
    started = time.perf_counter()
    qcat("train", data, "--out", adapter, "--seed", split, *model, *extra, log=args.work / f"{name}.train.log")
    seconds = time.perf_counter() - started
    qcat("eval", DATA / "test.jsonl", "--adapter", adapter, "--report", report, *model, log=args.work / f"{name}.log")
    metrics = json.loads((report / "metrics.json").read_text())
    manifest = json.loads((adapter / "qcat-manifest.json").read_text())
    result = {
        "ratio": ratio,
        "split": split,
        "known_intents": len(known),
        "seconds_to_adapter": round(seconds, 1),
        "review_threshold": manifest["routing"]["review_threshold"],
        "outside_distance": manifest["routing"].get("outside_distance"),
        "held_out_expected": manifest["routing"]["expected"],
        "closed_set_accuracy": metrics["accuracy"],
        "routing": metrics["routing"],
        "open_set": metrics.get("open_set"),
        "curve": curve(report / "predictions.csv", Taxonomy.from_names(sorted(known))),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "curve"}), flush=True)
    saved.write_text(json.dumps(result))
    return result


THRESHOLDS = [round(t, 2) for t in np.linspace(0.0, 1.0, 51)]


def curve(predictions: Path, taxonomy: Taxonomy) -> dict[str, list[float]]:
    """Open-set figures at every threshold, from eval's predictions.csv (qcat's own metric code)."""
    with predictions.open(newline="", encoding="utf-8") as handle:
        scored = [Scored(r["text"], r["gold"], r["predicted"], float(r["confidence"])) for r in csv.DictReader(handle)]
    figures: dict[str, list[float]] = {"threshold": THRESHOLDS, "accuracy": [], "macro_f1": [], "unknown_recall": []}
    figures["known_accuracy"] = []
    for threshold in THRESHOLDS:
        metrics = open_set_metrics(scored, taxonomy, RoutingPolicy(review_threshold=threshold)) or {}
        for key in ("accuracy", "macro_f1", "unknown_recall", "known_accuracy"):
            figures[key].append(round(float(metrics.get(key, float("nan"))), 4))
    return figures


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per ratio: the means over class splits (open set; closed set for ratio 1.0), beside ADB's."""
    summary: dict[str, Any] = {}
    for ratio in sorted({r["ratio"] for r in runs}):
        these = [r for r in runs if r["ratio"] == ratio]
        key = str(ratio)
        if ratio == 1.0:
            summary[key] = {
                "accuracy": statistics.mean(r["closed_set_accuracy"] for r in these),
                "macro_f1": None,
                "coverage_at_own_threshold": statistics.mean(r["routing"]["coverage"] for r in these),
                "precision_at_own_threshold": statistics.mean(r["routing"]["precision"] for r in these),
            }
        else:
            summary[key] = {
                metric: statistics.mean(r["open_set"][metric] for r in these)
                for metric in ("accuracy", "macro_f1", "known_accuracy", "unknown_recall", "unknown_precision")
            } | {"best_published_accuracy_macro_f1_percent": BEST_PUBLISHED.get(key)}
            summary[key]["per_split"] = [
                {"split": r["split"], "accuracy": r["open_set"]["accuracy"], "macro_f1": r["open_set"]["macro_f1"]}
                for r in these
            ]
        summary[key]["splits"] = len(these)
    return summary


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    """Per known ratio, open-set macro-F1 against the threshold and unknown recall against known-class accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for ratio in sorted({r["ratio"] for r in runs if r["ratio"] < 1.0}):
        curves = [r["curve"] for r in runs if r["ratio"] == ratio]
        mean = {key: np.nanmean([c[key] for c in curves], axis=0) for key in ("macro_f1", "unknown_recall")}
        known = np.nanmean([c["known_accuracy"] for c in curves], axis=0)
        chosen = statistics.mean(r["review_threshold"] for r in runs if r["ratio"] == ratio)
        (line,) = left.plot(THRESHOLDS, mean["macro_f1"], label=f"{ratio:.0%} known")
        left.axvline(chosen, color=line.get_color(), linestyle=":", linewidth=1)
        right.plot(known, mean["unknown_recall"], color=line.get_color(), label=f"{ratio:.0%} known")
    left.set_xlabel("review threshold (dotted: chosen by qcat train on held-out rows)")
    left.set_ylabel("open-set macro-F1 (unknown = one class)")
    right.set_xlabel("known questions routed to their right label")
    right.set_ylabel("unknown questions sent to review")
    for axes in (left, right):
        axes.set_ylim(0, 1.02)
        axes.legend(loc="lower left", fontsize=8)
        axes.grid(alpha=0.3)
    figure.suptitle("Banking77 open set, qcat train defaults (mean over class splits)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main() -> None:
    argv, extra = split_at_dashes(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base_model")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--splits", type=int, default=3)
    parser.add_argument("--closed-splits", type=int, default=1, help="seeds of the closed set (ratio 1.0)")
    parser.add_argument("--parallel", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", type=Path, default=Path("/tmp") / f"qcat-open-set-{time.time_ns()}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "open-set-banking77.json")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    # the largest training sets first, so the last ones to finish are short; an interrupted call resumes with --work
    jobs = [
        (ratio, split)
        for ratio in sorted(args.ratios, reverse=True)
        for split in range(args.closed_splits if ratio == 1.0 else args.splits)
    ]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda job: run(job[0], job[1], args, extra), jobs))
    summary = summarize(runs)
    closed = summary.get("1.0", {})
    report = {
        "command": "python bench/open_set.py " + " ".join(sys.argv[1:]),
        "device": device_name(),
        "closed_set_accuracy": closed.get("accuracy"),
        "closed_set_routed": closed.get("coverage_at_own_threshold"),
        **summary,
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    plot(runs, args.out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"}, indent=2))


def split_at_dashes(argv: list[str]) -> tuple[list[str], list[str]]:
    """This script's arguments, and what follows `--` (options for every `qcat train`)."""
    if "--" not in argv:
        return argv, []
    return argv[: argv.index("--")], argv[argv.index("--") + 1 :]


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


if __name__ == "__main__":
    main()
