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
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from qcat.routing import DEFAULT_KNOWN_COVERAGE, DEFAULT_REVIEW_PRECISION, DEFAULT_REVIEW_THRESHOLD, RoutingPolicy
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
    routed = np.array([policy.routes(s.predicted, s.confidence, threshold, s.distance) for s in scored], dtype=bool)
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


NONE_OF_THESE = frozenset({"none", "noneofthese", "oos", "outofscope", "unknown", "nointent"})
"""Label names (case, spaces, `_` and `-` aside) taken for a 'none of these' label when --unknown-label is not given."""


def with_unknown_label(goal: RoutingGoal, taxonomy: Taxonomy) -> RoutingGoal:
    """`goal`, its 'none of these' label found by name (`NONE_OF_THESE`) when none was given."""
    if goal.unknown_label is not None:
        return goal
    found = [name for name in taxonomy.names if "".join(c for c in name.lower() if c.isalnum()) in NONE_OF_THESE]
    if len(found) != 1:
        return goal
    log.info("a 'none of these' label, by its name: its answers go to review", unknown_label=found[0])
    return replace(goal, unknown_label=found[0])


def choose_policy(scored: Sequence[Scored], taxonomy: Taxonomy, goal: RoutingGoal) -> RoutingPolicy:
    """The routing policy for `goal` on held-out answers, with the figures expected there.

    First the open-set boundary, where answers carry distances (`choose_boundary`); then, among the answers inside
    it, the lowest confidence threshold meeting the goal. Lowest, because every step up sends more right answers to
    review (for a coverage goal, the lowest meeting it is the highest that still routes the share asked for). Without
    a threshold that meets the goal the adapter keeps the default one, and says so.
    """
    unknown_label = goal.unknown_label
    boundary = choose_boundary(scored, taxonomy, goal)
    inside = RoutingPolicy(review_threshold=0.0, unknown_label=unknown_label, **boundary)
    answers = [s for s in scored if inside.routes(s.predicted, s.confidence, distance=s.distance)]
    confidence = np.array([s.confidence for s in answers], dtype=float)
    if goal.unknown_recall is not None:
        threshold = _threshold_for_unknown_recall(scored, taxonomy, inside, goal.unknown_recall)
        target, kind = goal.unknown_recall, "unknown_recall"
    elif goal.review_coverage is not None:
        share = goal.review_coverage * len(scored) / max(1, len(answers))
        threshold = _threshold_for_coverage(confidence, share) if answers and share <= 1 else 0.0
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
        policy = inside.model_copy(update={"review_threshold": DEFAULT_REVIEW_THRESHOLD})
    else:
        policy = inside.model_copy(update={"review_threshold": threshold, "goal": kind, "target": target})
    expected = routing_figures(scored, taxonomy, policy)
    del expected["review_threshold"]
    return policy.model_copy(update={"expected": expected})


def choose_boundary(scored: Sequence[Scored], taxonomy: Taxonomy, goal: RoutingGoal) -> dict[str, Any]:
    """The open-set boundary (`RoutingPolicy.outside_distance` and how it was chosen), from held-out answers'
    distances; none when the answers carry no distances.

    With held-out questions of a 'none of these' label, the distance that best separates them from the known ones:
    the highest mean of the share of known questions routed right and the share of 'none of these' questions sent to
    review (each side counted as much as the other, whatever their numbers). Without, the distance that keeps
    `goal.known_coverage` of the known questions inside: chosen from known questions alone, it assumes nothing about
    how many unknown ones the stream will hold.
    """
    if not scored or any(s.distance is None for s in scored):
        return {}
    distance = np.array([s.distance for s in scored], dtype=float)
    unknown = np.array([s.gold == goal.unknown_label for s in scored], dtype=bool)
    known_distances = np.sort(distance[~unknown])
    if unknown.any() and (~unknown).any():
        right = np.array([s.predicted == s.gold != goal.unknown_label for s in scored], dtype=bool)
        labelled_none = np.array([s.predicted == goal.unknown_label for s in scored], dtype=bool)
        candidates = np.unique(np.quantile(distance, np.linspace(0.0, 1.0, 1025)))  # a bounded sweep
        inside = distance[None, :] <= candidates[:, None]
        routed_right = (inside & right[None, :])[:, ~unknown].mean(axis=1)
        reviewed = (~inside | labelled_none[None, :])[:, unknown].mean(axis=1)
        best = int(np.argmax(routed_right + reviewed))
        return {"outside_distance": float(candidates[best]), "outside_goal": "balanced", "outside_target": None}
    if not len(known_distances):
        return {}
    index = min(len(known_distances) - 1, max(0, math.ceil(goal.known_coverage * len(known_distances)) - 1))
    return {
        "outside_distance": float(known_distances[index]),
        "outside_goal": "known_coverage",
        "outside_target": goal.known_coverage,
    }


def goal_of(policy: RoutingPolicy) -> RoutingGoal:
    """The goal `policy` was chosen for (the default goal for a policy that was given, not chosen)."""
    return RoutingGoal(
        review_precision=policy.target if policy.goal == "precision" and policy.target else DEFAULT_REVIEW_PRECISION,
        unknown_recall=policy.target if policy.goal == "unknown_recall" else None,
        review_coverage=policy.target if policy.goal == "coverage" else None,
        unknown_label=policy.unknown_label,
        known_coverage=policy.outside_target
        if policy.outside_goal == "known_coverage" and policy.outside_target
        else DEFAULT_KNOWN_COVERAGE,
    )


def _threshold_for_coverage(confidence: np.ndarray, target: float) -> float:
    """The highest threshold that routes at least `target` of these answers: the confidence of the answer that
    completes that share, most confident first."""
    needed = max(1, math.ceil(target * len(confidence) - 1e-9))
    return float(np.sort(confidence)[::-1][needed - 1])


def _threshold_for_unknown_recall(
    scored: Sequence[Scored], taxonomy: Taxonomy, inside: RoutingPolicy, target: float
) -> float | None:
    """The lowest threshold that sends `target` of the unknown questions to review (with `inside`'s boundary)."""
    routed, _, unknown = _arrays(scored, taxonomy, inside)
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


def plot_distances(scored: Sequence[Scored], taxonomy: Taxonomy, policy: RoutingPolicy, path: Path) -> None:
    """Left: how far questions lie from the labels' questions, known ones and (when there are some) unknown ones,
    with the adapter's boundary. Right: where the boundary could be, as the share of known questions it keeps inside,
    against what each choice does: known questions routed right and, with unknown questions, those sent to review
    and the open-set accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    known = set(taxonomy.names) - {policy.unknown_label}
    distance = np.array([s.distance for s in scored], dtype=float)
    unknown = np.array([s.gold not in known for s in scored], dtype=bool)
    boundary = float(policy.outside_distance or np.inf)
    figure, (left, trade) = plt.subplots(1, 2, figsize=(11, 4.2))
    bins = np.linspace(0.0, float(np.quantile(distance, 0.995)) * 1.05, 50)
    left.hist(distance[~unknown], bins=bins, alpha=0.6, label=f"known labels ({int((~unknown).sum())})", density=True)
    if unknown.any():
        left.hist(distance[unknown], bins=bins, alpha=0.6, label=f"unknown ({int(unknown.sum())})", density=True)
    left.axvline(boundary, color="black", linestyle="--", label=f"boundary {boundary:.1f}: beyond it, review")
    left.set_xlabel("distance to the nearest label's questions")
    left.set_ylabel("share of questions (density)")
    left.legend(fontsize=8)
    shares = np.linspace(0.80, 1.0, 41)
    curves: dict[str, list[float]] = {"known questions routed right": [], "unknown questions sent to review": []}
    curves["open-set accuracy"] = []
    for share in shares:
        edge = float(np.quantile(distance[~unknown], share)) if (~unknown).any() else np.inf
        moved = policy.model_copy(update={"outside_distance": max(edge, 1e-9)})
        routed, right, _ = _arrays(scored, taxonomy, moved)
        curves["known questions routed right"].append(float(right[~unknown].mean()) if (~unknown).any() else 0.0)
        if unknown.any():
            curves["unknown questions sent to review"].append(float((~routed[unknown]).mean()))
            curves["open-set accuracy"].append(float(((right & ~unknown) | (~routed & unknown)).mean()))
    for name, values in curves.items():
        if values:
            trade.plot(shares, values, label=name)
    inside = float((distance[~unknown] <= boundary).mean()) if (~unknown).any() else 1.0
    trade.axvline(inside, color="black", linestyle="--", label=f"the adapter's boundary: {inside:.1%} inside")
    trade.set_xlabel("known questions the boundary keeps inside")
    trade.set_ylim(0, 1.02)
    trade.grid(alpha=0.3)
    trade.legend(fontsize=8, loc="lower left")
    figure.suptitle("questions outside the taxonomy: distance in the adapter's feature space")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
