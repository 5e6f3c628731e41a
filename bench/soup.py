"""Adapter soup vs its ingredients: N seeds of one recipe, their average (`qcat soup`), all scored on one test set.

    python bench/soup.py BASE_MODEL DATASET_DIR [--seeds 5] [--device cuda] [--tag T] -- [qcat train options]

Splits DATASET_DIR/train.jsonl once (stratified 10% held out, seed 0) so that every seed trains on the same rows and
none of them sees the held-out questions the soup is calibrated on; trains the N seeds at once (a LoRA step is bound
by the host, so seeds share a GPU well), averages them with `qcat soup`, and evaluates every seed and the soup on
test.jsonl with `qcat eval`. Also reports the seeds' majority vote (an ensemble N times as costly to serve), the
bar a soup aims at. Writes bench/results/soup-<dataset>[-<tag>]/summary.json, and each report to bench/reports/
(not committed).
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qcat.training.data import load_examples, stratified_split, write_examples  # noqa: E402


def qcat(*args: object) -> list[str]:
    return [sys.executable, "-m", "qcat", *(str(arg) for arg in args)]


def predictions(report: Path, test: list[tuple[str, str]]) -> list[str]:
    """Each test question's predicted label, from the report's misclassified list (the rest were right)."""
    with (report / "misclassified.csv").open(newline="") as rows:
        wrong = {row["text"]: row["predicted"] for row in csv.DictReader(rows)}
    return [wrong.get(text, label) for text, label in test]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base_model")
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds FIRST .. FIRST+N-1 (the split stays seed 0)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tag", default="")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args, train_options = parser.parse_args(argv[:cut]), argv[cut + 1 :]  # after --: for every `qcat train`

    name = args.dataset.resolve().name
    out = ROOT / "bench" / "results" / f"soup-{name}{'-' + args.tag if args.tag else ''}"
    work = Path("/tmp") / f"qcat-soup-{name}-{time.time_ns()}"
    work.mkdir(parents=True)
    reports = ROOT / "bench" / "reports" / out.name  # not committed: results stay small
    for folder in (out, reports):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    model = ("--base-model", args.base_model, "--device", args.device)

    train, held_out = stratified_split(load_examples(args.dataset / "train.jsonl"), eval_fraction=0.1, seed=0)
    train_file = write_examples(train, work / "train.jsonl")
    held_out_file = write_examples(held_out, work / "held-out.jsonl")
    seeds = [work / f"seed{seed}" for seed in range(args.first_seed, args.first_seed + args.seeds)]
    started = time.perf_counter()
    train_command = ("train", train_file, "--eval", held_out_file, *model, *train_options)
    jobs = [
        subprocess.Popen(
            qcat(*train_command, "--out", adapter, "--seed", adapter.name.removeprefix("seed")),
            cwd=ROOT,
            stdout=(work / f"train-{adapter.name}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for adapter in seeds
    ]
    failed = [adapter.name for adapter, job in zip(seeds, jobs, strict=True) if job.wait() != 0]
    if failed:
        sys.exit(f"training seeds {failed} failed: see {work}/train-seed*.log")
    train_seconds = time.perf_counter() - started
    subprocess.run(qcat("soup", *seeds, "--out", work / "soup", "--eval", held_out_file, *model), check=True, cwd=ROOT)

    test = [(e.text, e.label) for e in load_examples(args.dataset / "test.jsonl")]
    accuracy: dict[str, float] = {}
    evaluations = {  # at once, like the training: each mostly loads the model and waits on the host
        adapter: subprocess.Popen(
            qcat(
                "eval",
                args.dataset / "test.jsonl",
                "--adapter",
                adapter,
                "--report",
                reports / f"test-{adapter.name}",
                *model,
            ),
            cwd=ROOT,
        )
        for adapter in [*seeds, work / "soup"]
    }
    for adapter, job in evaluations.items():
        if job.wait() != 0:
            sys.exit(f"evaluating {adapter} failed")
        report = reports / f"test-{adapter.name}"
        accuracy[adapter.name] = json.loads((report / "metrics.json").read_text())["accuracy"]
        shutil.copytree(adapter / "report", reports / f"held-out-{adapter.name}")
    votes = zip(*(predictions(reports / f"test-{adapter.name}", test) for adapter in seeds), strict=True)
    majority = [collections.Counter(vote).most_common(1)[0][0] for vote in votes]  # a tie goes to the lower seed
    summary = {
        "command": "python bench/soup.py " + " ".join(sys.argv[1:]),
        "dataset": name,
        "test_examples": len(test),
        "seeds": {adapter.name: accuracy[adapter.name] for adapter in seeds},
        "seeds_mean": statistics.mean(accuracy[adapter.name] for adapter in seeds),
        "majority_vote": sum(p == label for p, (_, label) in zip(majority, test, strict=True)) / len(test),
        "soup": accuracy["soup"],
        "train_seconds_all_seeds": train_seconds,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")
    print(
        f"seeds_mean={summary['seeds_mean']:.4f} majority_vote={summary['majority_vote']:.4f} "
        f"soup={summary['soup']:.4f}"
    )


if __name__ == "__main__":
    main()
