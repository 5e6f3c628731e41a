"""Which score tells questions outside the taxonomy apart best? The open-set benchmark's adapters, re-scored four ways.

    python bench/open_set.py BASE_MODEL --work DIR ...             # first: trains and evaluates the adapters
    python bench/open_set_scores.py BASE_MODEL --work DIR [--device cuda]

For every run bench/open_set.py left under --work (adapter `r{ratio}-s{split}`, its training file `.jsonl`), this
recovers train's held-out split (the same function and seed), runs the merged adapter once over the training rows,
the held-out rows and the Banking77 test set, keeping each question's label logits and the last hidden state the
label head reads, and scores every question four ways (higher: more likely one of the known intents):

- `msp`: the calibrated top probability, what qcat routes on today;
- `energy`: T * logsumexp(logits / T), the free energy of the logits (Liu et al., NeurIPS 2020);
- `centroid`: cosine similarity to the nearest class centroid of the training rows' hidden states;
- `mahalanobis`: minus the smallest Mahalanobis distance to a class mean of those hidden states, one covariance
  shared by all classes (Ledoit-Wolf shrinkage; Lee et al., NeurIPS 2018).

Each score's threshold keeps 95% of the held-out known questions (chosen without a single unknown question, as train
must); at it, the open-set accuracy and macro-F1 of the protocol (qcat's own `open_set_metrics`). Also the AUROC of
known against unknown test questions, and each score's best accuracy over thresholds read on the test set itself (an
oracle: what a perfect threshold rule would reach). Research for choosing one score; qcat ships only `msp` today.
Writes bench/results/open-set-scores-banking77.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.open_set import DATA, rows  # noqa: E402
from qcat.engine import Engine  # noqa: E402
from qcat.pytorch.engine import TorchScorer, load_engine  # noqa: E402
from qcat.pytorch.model import HEAD  # noqa: E402
from qcat.routing import RoutingPolicy  # noqa: E402
from qcat.settings import EngineSettings  # noqa: E402
from qcat.training.data import (  # noqa: E402
    Example,
    Scored,
    load_examples,
    resolve_conflicts,
    stratified_split,
)
from qcat.training.open_set import open_set_metrics  # noqa: E402
from qcat.training.run import TrainRequest  # noqa: E402

KEEP_KNOWN = 0.95
"""Share of held-out known questions each score's threshold keeps."""
SCORES = ("msp", "energy", "centroid", "mahalanobis")


@torch.inference_mode()
def features(engine: Engine, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each text's label logits, from the engine's own path, and the last hidden state its label head read (caught
    by a hook on the head), float32, in input order."""
    scorer = engine.scorer
    assert isinstance(scorer, TorchScorer)
    caught: list[np.ndarray] = []
    hook = getattr(scorer.base.lm, HEAD).register_forward_hook(
        lambda module, inputs, output: caught.append(inputs[0].float().cpu().numpy())
    )
    try:
        ids = engine.encode(texts).ids
        logits = engine.logits(ids)
    finally:
        hook.remove()
    hidden = np.empty((len(ids), caught[0].shape[1]), dtype=np.float32)
    for chunk, states in zip(engine.chunks([len(row) for row in ids]), caught, strict=True):  # the passes' order
        hidden[chunk] = states
    return hidden, logits


@dataclass(frozen=True)
class Anchor:
    """The training rows' hidden states summed up once per adapter: class means, their unit directions, and the
    whitening of the shared (Ledoit-Wolf) covariance."""

    means: np.ndarray
    unit: np.ndarray
    whiten: np.ndarray

    @classmethod
    def fit(cls, hidden: np.ndarray, labels: list[int]) -> Anchor:
        from sklearn.covariance import LedoitWolf

        label_of, classes = np.array(labels), sorted(set(labels))
        means = np.stack([hidden[label_of == c].mean(axis=0) for c in classes])
        covariance = LedoitWolf().fit(hidden - means[np.searchsorted(classes, label_of)])
        # precision = L L^T, so Mahalanobis distances are Euclidean after x @ L
        return cls(
            means, means / np.linalg.norm(means, axis=1, keepdims=True), np.linalg.cholesky(covariance.precision_)
        )


def scores(anchor: Anchor, temperature: float, hidden: np.ndarray, logits: np.ndarray) -> dict[str, np.ndarray]:
    """The four scores of each row of `hidden` / `logits` (higher: more likely known)."""
    scaled = logits / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_partition = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    normed = hidden / np.linalg.norm(hidden, axis=1, keepdims=True)
    projected, centres = hidden @ anchor.whiten, anchor.means @ anchor.whiten
    squared = (projected**2).sum(1)[:, None] - 2 * projected @ centres.T + (centres**2).sum(1)[None, :]
    return {
        "msp": np.exp(top[:, 0] - log_partition),
        "energy": temperature * log_partition,
        "centroid": (normed @ anchor.unit.T).max(axis=1),
        "mahalanobis": -squared.min(axis=1),
    }


def rank_against(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's share of `reference` at or below it: every score on one [0, 1] scale, so that a threshold of
    1 - KEEP_KNOWN keeps KEEP_KNOWN of the reference (the held-out known rows)."""
    return np.searchsorted(np.sort(reference), values, side="right") / len(reference)


def run(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    name = path.name
    ratio, split = float(name.split("-")[0][1:]), int(name.split("-s")[1])
    settings = EngineSettings(base_model=args.base_model, adapter=path, device=args.device, batch_size=256)
    engine = load_engine(settings)
    names = engine.taxonomy.names
    examples, _, _ = resolve_conflicts(load_examples(args.work / f"{name}.jsonl"), [], "error")  # as train does
    train, held_out = stratified_split(examples, eval_fraction=TrainRequest.eval_fraction, seed=split)
    test = [Example(row["text"], row["label"], f"test:{i}") for i, row in enumerate(rows("test"))]
    per_set = {}
    train_hidden, _ = features(engine, [e.text for e in train])
    anchor = Anchor.fit(train_hidden, [names.index(e.label) for e in train])
    for key, examples_ in (("held_out", held_out), ("test", test)):
        hidden, logits = features(engine, [e.text for e in examples_])
        per_set[key] = (scores(anchor, engine.temperature, hidden, logits), logits.argmax(axis=1))
    known = np.array([e.label in names for e in test])
    result: dict[str, Any] = {"ratio": ratio, "split": split}
    for score in SCORES:
        reference = per_set["held_out"][0][score]
        values = per_set["test"][0][score]
        ranked = rank_against(reference, values)
        scored = [
            Scored(e.text, e.label, names[p], float(r))
            for e, p, r in zip(test, per_set["test"][1], ranked, strict=True)
        ]
        taxonomy = engine.taxonomy
        chosen = open_set_metrics(scored, taxonomy, RoutingPolicy(review_threshold=1 - KEEP_KNOWN)) or {}
        oracle = max(
            (open_set_metrics(scored, taxonomy, RoutingPolicy(review_threshold=t)) or {}).get("accuracy", 0.0)
            for t in np.linspace(0, 1, 101)
        )
        result[score] = {
            "accuracy": chosen.get("accuracy"),
            "macro_f1": chosen.get("macro_f1"),
            "known_accuracy": chosen.get("known_accuracy"),
            "unknown_recall": chosen.get("unknown_recall"),
            "auroc": float(roc_auc_score(known, values)),
            "oracle_accuracy": oracle,
        }
    print(json.dumps(result), flush=True)
    del engine
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base_model")
    parser.add_argument("--work", type=Path, required=True, help="bench/open_set.py's --work")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "open-set-scores-banking77.json")
    args = parser.parse_args()
    adapters = sorted(p for p in args.work.glob("r0.*-s*") if (p / "qcat-manifest.json").is_file())
    runs = [run(path, args) for path in adapters]
    summary = {
        str(ratio): {
            score: {
                metric: statistics.mean(r[score][metric] for r in runs if r["ratio"] == ratio)
                for metric in ("accuracy", "macro_f1", "unknown_recall", "auroc", "oracle_accuracy")
            }
            for score in SCORES
        }
        for ratio in sorted({r["ratio"] for r in runs})
    }
    report = {"command": "python bench/open_set_scores.py " + " ".join(sys.argv[1:]), "data": str(DATA)}
    args.out.write_text(json.dumps(report | summary | {"runs": runs}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
