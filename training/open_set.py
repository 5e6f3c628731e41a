"""Questions outside the taxonomy: choosing an adapter's review threshold for a stated goal, and measuring where
unknown questions end (review, or a wrong route).

A question is *unknown* when its gold label is not one of the adapter's labels, or is the adapter's trained 'none
of these' label (`RoutingPolicy.unknown_label`). An answer is *routed* when the policy sends it to its label's topic;
everything else goes to review. Open-set metrics follow the open-intent protocol (Zhang et al., AAAI 2021): unknown
is one more class, predicted for every answer sent to review.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from qcat.routing import DEFAULT_REVIEW_PRECISION, DEFAULT_REVIEW_THRESHOLD, RoutingPolicy
from qcat.schemas.taxonomy import Taxonomy
from qcat.training.config import RoutingGoal
from qcat.training.data import Scored

log = structlog.get_logger(__name__)

UNKNOWN = "(unknown)"
"""The open-set class: gold for unknown questions, predicted for answers sent to review."""


def threshold_for_precision(confidence: np.ndarray, correct: np.ndarray, target: float) -> dict[str, float] | None:
    """The lowest confidence threshold whose routed answers (confidence >= threshold) reach `target` precision;
    the rest would go to review. None if no threshold reaches it."""
    order = np.argsort(-confidence)
    hits = np.cumsum(correct[order])
    precision = hits / np.arange(1, len(order) + 1)
    reaching = np.nonzero(precision >= target)[0]
    if len(reaching) == 0:
        return None
    last = int(reaching.max())
    return {
        "threshold": float(confidence[order][last]),
        "precision": float(precision[last]),
        "coverage": float((last + 1) / len(order)),
    }


def _arrays(
    scored: Sequence[Scored], taxonomy: Taxonomy, policy: RoutingPolicy, threshold: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per answer: routed, routed and right, unknown question."""
    known = set(taxonomy.names) - {policy.unknown_label}
    routed = np.array([policy.routes(s.predicted, s.confidence, threshold) for s in scored], dtype=bool)
    right = routed & np.array([s.predicted == s.gold for s in scored], dtype=bool)
    unknown = np.array([s.gold not in known for s in scored], dtype=bool)
    return routed, right, unknown


def routing_figures(
    scored: Sequence[Scored], taxonomy: Taxonomy, policy: RoutingPolicy, threshold: float | None = None
) -> dict[str, float]:
    """What the policy does on these answers: the share routed (`coverage`), the share of routed answers that are
    right (`precision`) and, when some questions are unknown, the share of those sent to review (`unknown_recall`)."""
    routed, right, unknown = _arrays(scored, taxonomy, policy, threshold)
    figures = {
        "review_threshold": policy.review_threshold if threshold is None else threshold,
        "coverage": float(routed.mean()) if len(routed) else 0.0,
        "precision": float(right.sum() / routed.sum()) if routed.any() else 1.0,
    }
    if unknown.any():
        figures["unknown_recall"] = float((~routed[unknown]).mean())
    return figures


def open_set_metrics(scored: Sequence[Scored], taxonomy: Taxonomy, policy: RoutingPolicy) -> dict[str, Any] | None:
    """Open-set accuracy and macro-F1 (unknown as one class), known-class accuracy, unknown recall, precision and F1;
    None when no question is unknown."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    routed, _, unknown = _arrays(scored, taxonomy, policy)
    if not unknown.any():
        return None
    gold = [UNKNOWN if u else s.gold for s, u in zip(scored, unknown, strict=True)]
    predicted = [s.predicted if r else UNKNOWN for s, r in zip(scored, routed, strict=True)]
    classes = [name for name in taxonomy.names if name != policy.unknown_label] + [UNKNOWN]
    hits = np.array([g == p for g, p in zip(gold, predicted, strict=True)])
    precision, recall, f1, _ = precision_recall_fscore_support(
        gold, predicted, labels=[UNKNOWN], average=None, zero_division=0
    )
    per_class = f1_score(gold, predicted, labels=classes, average=None, zero_division=0)
    return {
        "questions": len(scored),
        "unknown_questions": int(unknown.sum()),
        "accuracy": float(hits.mean()),
        "macro_f1": float(per_class.mean()),
        "known_accuracy": float(hits[~unknown].mean()) if (~unknown).any() else 0.0,
        "known_macro_f1": float(per_class[:-1].mean()) if len(classes) > 1 else 0.0,
        "unknown_recall": float(recall[0]),
        "unknown_precision": float(precision[0]),
        "unknown_f1": float(f1[0]),
    }


def choose_policy(scored: Sequence[Scored], taxonomy: Taxonomy, goal: RoutingGoal) -> RoutingPolicy:
    """The lowest review threshold meeting `goal` on held-out answers, with the figures expected there.

    Lowest, because every step up sends more right answers to review (for a coverage goal, the lowest meeting it is
    the highest that still routes the share asked for). Without a threshold that meets the goal the adapter keeps the
    default one, and says so.
    """
    unknown_label = goal.unknown_label
    answers = [s for s in scored if s.predicted != unknown_label]
    confidence = np.array([s.confidence for s in answers], dtype=float)
    if goal.unknown_recall is not None:
        threshold = _threshold_for_unknown_recall(scored, taxonomy, unknown_label, goal.unknown_recall)
        target, kind = goal.unknown_recall, "unknown_recall"
    elif goal.review_coverage is not None:
        threshold = _threshold_for_coverage(confidence, goal.review_coverage) if answers else None
        target, kind = goal.review_coverage, "coverage"
    else:
        correct = np.array([s.predicted == s.gold for s in answers], dtype=float)
        reached = threshold_for_precision(confidence, correct, goal.review_precision) if answers else None
        threshold = reached["threshold"] if reached else None
        target, kind = goal.review_precision, "precision"
    if threshold is None:
        log.warning(
            "no review threshold meets the goal on the held-out rows; the adapter keeps the default",
            goal=kind,
            target=target,
            review_threshold=DEFAULT_REVIEW_THRESHOLD,
        )
        policy = RoutingPolicy(unknown_label=unknown_label)
    else:
        policy = RoutingPolicy(review_threshold=threshold, unknown_label=unknown_label, goal=kind, target=target)
    expected = routing_figures(scored, taxonomy, policy)
    del expected["review_threshold"]
    return policy.model_copy(update={"expected": expected})


def goal_of(policy: RoutingPolicy) -> RoutingGoal:
    """The goal `policy` was chosen for (the default goal for a policy that was given, not chosen)."""
    return RoutingGoal(
        review_precision=policy.target if policy.goal == "precision" and policy.target else DEFAULT_REVIEW_PRECISION,
        unknown_recall=policy.target if policy.goal == "unknown_recall" else None,
        review_coverage=policy.target if policy.goal == "coverage" else None,
        unknown_label=policy.unknown_label,
    )


def _threshold_for_coverage(confidence: np.ndarray, target: float) -> float:
    """The highest threshold that routes at least `target` of these answers: the confidence of the answer that
    completes that share, most confident first."""
    needed = max(1, math.ceil(target * len(confidence) - 1e-9))
    return float(np.sort(confidence)[::-1][needed - 1])


def _threshold_for_unknown_recall(
    scored: Sequence[Scored], taxonomy: Taxonomy, unknown_label: str | None, target: float
) -> float | None:
    """The lowest threshold that sends `target` of the unknown questions to review."""
    policy = RoutingPolicy(review_threshold=0.0, unknown_label=unknown_label)
    routed, _, unknown = _arrays(scored, taxonomy, policy)
    if not unknown.any():
        return None
    needed = math.ceil(target * int(unknown.sum()) - 1e-9) - int((~routed[unknown]).sum())
    if needed <= 0:
        return 0.0
    # answers to unknown questions that would be routed at threshold 0, least confident first: the threshold must
    # rise just above the `needed`-th of them
    confidences = np.sort(np.array([s.confidence for s in scored], dtype=float)[unknown & routed])
    return float(min(np.nextafter(confidences[needed - 1], 2.0), 1.0))


def plot_routing(scored: Sequence[Scored], taxonomy: Taxonomy, policy: RoutingPolicy, path: Path) -> None:
    """Precision of routed answers, coverage and (with unknown questions) unknown recall against the threshold,
    with the policy's threshold marked: the trade-off a goal picks a point on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thresholds = np.linspace(0.0, 1.0, 101)
    curves = [routing_figures(scored, taxonomy, policy, float(t)) for t in thresholds]
    figure, axes = plt.subplots(figsize=(6, 4))
    names = {"precision": "precision of routed answers", "coverage": "share routed (coverage)"}
    if "unknown_recall" in curves[0]:
        names["unknown_recall"] = "unknown questions sent to review"
    for key, name in names.items():
        axes.plot(thresholds, [c[key] for c in curves], label=name)
    chosen = policy.review_threshold
    axes.axvline(chosen, color="grey", linestyle="--", label=f"the adapter's threshold, {chosen:.3f}")
    axes.set_xlabel("review threshold (answers under it go to review)")
    axes.set_ylim(0, 1.02)
    axes.legend(loc="lower left", fontsize=8)
    axes.set_title("routing trade-off")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
