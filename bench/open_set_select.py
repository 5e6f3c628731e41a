"""Choosing the open-set default on training data only (`python bench/open_set.py BASE --select` runs this): class
splits of Banking77's training rows, never its test set. See bench/open_set.py for the protocol.

    python bench/open_set_select.py BASE_MODEL [--splits 2] [--ratio 0.5] --variant plain="" \\
        --variant compact="--compactness 0.1" [-- common qcat train options]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shlex
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.open_set import COVERAGES, DATA, SELECTABLE, device_name, known_intents, rows, split_at_dashes  # noqa: E402
from bench.train_defaults import qcat  # noqa: E402
from qcat.routing import RoutingPolicy  # noqa: E402
from qcat.schemas.taxonomy import Taxonomy  # noqa: E402
from qcat.training.data import Scored  # noqa: E402
from qcat.training.open_set import open_set_metrics  # noqa: E402

FIRST_SPLIT = 100
"""Class splits of the selection start here: apart from the test protocol's 0, 1, 2."""


def split_files(ratio: float, split: int, work: Path) -> tuple[Path, Path, set[str]]:
    """Training rows of the known intents (80%), and validation rows: the other 20% plus as many unknown-intent
    rows, all from the training file."""
    train = rows("train")
    known = known_intents(sorted({row["label"] for row in train}), ratio, split)
    generator = random.Random(split)
    inside = [row for row in train if row["label"] in known]
    generator.shuffle(inside)
    cut = int(0.8 * len(inside))
    outside = [row for row in train if row["label"] not in known]
    generator.shuffle(outside)
    validation = inside[cut:] + outside[: len(inside) - cut]
    files = work / f"sel-{ratio}-{split}-train.jsonl", work / f"sel-{ratio}-{split}-valid.jsonl"
    for path, chosen in zip(files, (inside[:cut], validation), strict=True):
        path.write_text("".join(json.dumps(row) + "\n" for row in chosen))
    return files[0], files[1], known


def read_scored(path: Path) -> list[Scored]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [
            Scored(r["text"], r["gold"], r["predicted"], float(r["confidence"]), float(r["distance"] or "nan"))
            for r in csv.DictReader(handle)
        ]


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """The chance that an unknown question scores above a known one (higher = more likely unknown)."""
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(known)), np.ones(len(unknown))]
    return float(roc_auc_score(labels, np.r_[known, unknown]))


def one(
    variant: str, flags: str, ratio: float, split: int, args: argparse.Namespace, extra: list[str]
) -> dict[str, Any]:
    train, valid, known = split_files(ratio, split, args.work)
    name = f"sel-{variant}-{ratio}-{split}"
    adapter, report, saved = args.work / name, args.work / f"{name}-valid", args.work / f"{name}.json"
    if saved.exists():
        return dict(json.loads(saved.read_text()))
    model = ("--base-model", args.base_model, "--device", args.device)
    qcat("train", train, "--out", adapter, "--seed", split, *model, *extra, *shlex.split(flags),
         log=args.work / f"{name}.train.log")  # fmt: skip
    qcat("eval", valid, "--adapter", adapter, "--report", report, *model, log=args.work / f"{name}.log")
    manifest = json.loads((adapter / "qcat-manifest.json").read_text())
    policy = RoutingPolicy.model_validate(manifest["routing"])
    held_out = np.array([s.distance for s in read_scored(adapter / "report" / "predictions.csv")])
    scored, taxonomy = read_scored(report / "predictions.csv"), Taxonomy.from_names(sorted(known))
    unknown = np.array([s.gold not in known for s in scored])
    distance = np.array([s.distance for s in scored])
    confidence = np.array([s.confidence for s in scored])
    result: dict[str, Any] = {
        "variant": variant, "flags": flags, "ratio": ratio, "split": split,
        "auroc_distance": auroc(distance[~unknown], distance[unknown]),
        "auroc_confidence": auroc(-confidence[~unknown], -confidence[unknown]),
        "own_policy": open_set_metrics(scored, taxonomy, policy),
        "confidence_only": open_set_metrics(scored, taxonomy, policy.model_copy(update={"outside_distance": None})),
        "by_coverage": {},
    }  # fmt: skip
    for coverage in COVERAGES:
        edge = float(np.quantile(held_out, coverage, method="higher"))
        moved = policy.model_copy(update={"outside_distance": edge})
        result["by_coverage"][str(coverage)] = open_set_metrics(scored, taxonomy, moved)
    print(json.dumps({k: v for k, v in result.items() if k != "by_coverage"}), flush=True)
    saved.write_text(json.dumps(result))
    return result


def choose(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The (variant, coverage) with the best mean of open-set accuracy and macro-F1 over splits."""
    scores: dict[tuple[str, float], list[float]] = {}
    for run in runs:
        for coverage in SELECTABLE:
            metrics = run["by_coverage"][str(coverage)]
            scores.setdefault((run["variant"], coverage), []).append((metrics["accuracy"] + metrics["macro_f1"]) / 2)
    (variant, coverage), best = max(scores.items(), key=lambda item: statistics.mean(item[1]))
    flags = next(run["flags"] for run in runs if run["variant"] == variant)
    return {
        "variant": variant,
        "known_coverage": coverage,
        "flags": f"{flags} --known-coverage {coverage}".strip(),
        "score": statistics.mean(best),
        "table": {f"{v} @ {c}": round(statistics.mean(x), 4) for (v, c), x in sorted(scores.items())},
    }


def main() -> None:
    argv, extra = split_at_dashes(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base_model")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--splits", type=int, default=2)
    parser.add_argument("--variant", action="append", required=True, help='NAME="qcat train flags"')
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--work", type=Path, default=Path("/tmp") / f"qcat-open-set-select-{time.time_ns()}")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "open-set-selection.json")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    variants = [item.split("=", 1) for item in args.variant]
    jobs = [(v, f, s) for s in range(FIRST_SPLIT, FIRST_SPLIT + args.splits) for v, f in variants]
    with ThreadPoolExecutor(args.parallel) as pool:
        runs = list(pool.map(lambda job: one(job[0], job[1], args.ratio, job[2], args, extra), jobs))
    report = {
        "command": "python bench/open_set_select.py " + " ".join(sys.argv[1:]),
        "device": device_name(),
        "data": f"{DATA.name} training rows only",
        "chosen": choose(runs),
        "runs": runs,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["chosen"], indent=2))


if __name__ == "__main__":
    main()
