"""Every accuracy run side by side: test accuracy per recipe and seed against the anchors, as a table and a plot.

    python bench/accuracy_summary.py

Reads bench/results/accuracy-<dataset>-<tag>/summary.json (written by bench/accuracy.py) and
bench/results/soup-<dataset>-<tag>/summary.json (bench/soup.py: each soup and, as one more recipe, its seeds). Runs
whose tags differ only by a trailing `-s<seed>` are seeds of one recipe (a tag without it is that recipe's seed 0).
With 500 TREC-6 test questions one run's standard error is ~0.7 points, so a recipe is judged by its seeds' mean,
not its best seed.
Writes bench/results/accuracy-summary.json and accuracy-summary.png.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
# Anchors the issue names: a plain LoRA recipe on the same proxy, and the published state of the art.
ANCHORS = {"trec": {"plain recipe": 0.976, "state of the art": 0.9807}, "banking77": {"state of the art": 0.937}}
SEED_SUFFIX = re.compile(r"-s(\d+)$")


def load_runs() -> dict[str, dict[str, list[dict[str, Any]]]]:
    """dataset -> recipe -> runs (one per seed)."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(RESULTS.glob("accuracy-*/summary.json")):
        summary = json.loads(path.read_text())
        tag = path.parent.name.removeprefix(f"accuracy-{summary['dataset']}-")
        seed = SEED_SUFFIX.search(tag)
        recipe = SEED_SUFFIX.sub("", tag)
        runs[summary["dataset"]][recipe].append(
            {"folder": path.parent.name, "seed": int(seed.group(1)) if seed else 0, "accuracy": summary["accuracy"]}
        )
    for path in sorted(RESULTS.glob("soup-*/summary.json")):  # bench/soup.py: N seeds of a recipe and their soup
        summary = json.loads(path.read_text())
        tag = path.parent.name.removeprefix(f"soup-{summary['dataset']}-")
        recipe, first = SEED_SUFFIX.sub("", tag), min(int(name.removeprefix("seed")) for name in summary["seeds"])
        soups = runs[summary["dataset"]][f"{recipe} soup of {len(summary['seeds'])}"]
        soups.append({"folder": path.parent.name, "seed": first, "accuracy": summary["soup"]})
        if "ingredients_from" in summary:  # a soup of seeds already counted with their own run
            continue
        for name, accuracy in summary["seeds"].items():
            seed = int(name.removeprefix("seed"))
            runs[summary["dataset"]][f"{recipe} soup ingredients"].append(
                {"folder": path.parent.name, "seed": seed, "accuracy": accuracy}
            )
    return runs


def summarize(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for dataset, recipes in runs.items():
        table[dataset] = {
            recipe: {
                "seeds": len(rows),
                "mean": statistics.fmean(row["accuracy"] for row in rows),
                "stdev": statistics.stdev(row["accuracy"] for row in rows) if len(rows) > 1 else None,
                "runs": sorted(rows, key=lambda row: row["seed"]),
            }
            for recipe, rows in sorted(recipes.items())
        }
    return table


def plot(table: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(table)
    widths = [max(3, len(table[dataset])) for dataset in datasets]  # one column per recipe, readable labels
    figure, axes = plt.subplots(
        1, len(datasets), figsize=(3 + 0.45 * sum(widths), 5.5), squeeze=False, gridspec_kw={"width_ratios": widths}
    )
    for axis, dataset in zip(axes[0], datasets, strict=True):
        recipes = table[dataset]
        for x, (recipe, stats) in enumerate(recipes.items()):
            accuracies = [100 * run["accuracy"] for run in stats["runs"]]
            color = "tab:green" if " soup of " in recipe else "tab:blue"
            axis.scatter([x] * len(accuracies), accuracies, color=color, alpha=0.6, s=24)
            axis.scatter([x], [100 * stats["mean"]], color="black", marker="_", s=400, label=None)
        for (name, value), style in zip(ANCHORS.get(dataset, {}).items(), ("--", ":"), strict=False):
            axis.axhline(100 * value, color="tab:red", linestyle=style, linewidth=1, label=f"{name} {100 * value:.2f}%")
        axis.set_xticks(range(len(recipes)), list(recipes), rotation=40, ha="right", fontsize=8)
        axis.set_ylabel("test accuracy (%)")
        axis.set_title(dataset)
        axis.legend(fontsize=8, loc="lower right")
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle("dots: one run each (green: soups); black bar: the recipe's mean; red: anchors", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    table = summarize(load_runs())
    for dataset, recipes in table.items():
        print(f"{dataset}:")
        for recipe, stats in recipes.items():
            spread = f" sd {100 * stats['stdev']:.2f}" if stats["stdev"] is not None else ""
            runs = " ".join(f"{100 * run['accuracy']:.1f}" for run in stats["runs"])
            print(f"  {recipe:32s} n={stats['seeds']} mean {100 * stats['mean']:.2f}%{spread}  [{runs}]")
    out = RESULTS / "accuracy-summary.json"
    out.write_text(json.dumps({"command": "python bench/accuracy_summary.py", "anchors": ANCHORS, **table}, indent=2))
    plot(table, RESULTS / "accuracy-summary.png")
    print(f"wrote {out} and {out.with_suffix('.png')}", file=sys.stderr)


if __name__ == "__main__":
    main()
