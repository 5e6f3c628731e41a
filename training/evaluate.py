"""Evaluation report: how good a classifier is on a held-out set, written for people (report.md with plots) and for
machines (metrics.json): accuracy, macro-F1, per-class precision/recall/F1, the confusion matrix, calibration (plot
and expected calibration error), the misclassified examples, and the confidence threshold for the review route."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qcat.routing import DEFAULT_REVIEW_PRECISION, RoutingPolicy
from qcat.schemas.taxonomy import Taxonomy
from qcat.training.data import Scored
from qcat.training.open_set import (
    open_set_metrics,
    plot_distances,
    plot_routing,
    routing_figures,
    threshold_for_precision,
)

CALIBRATION_BINS = 10


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by how many answers fall in each."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            error += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(error)


def evaluate(
    scored: Sequence[Scored], taxonomy: Taxonomy, *, target_precision: float = DEFAULT_REVIEW_PRECISION
) -> dict[str, Any]:
    """Closed-set metrics: every answer counts, whatever the review threshold."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(taxonomy.names)
    gold = [s.gold for s in scored]
    predicted = [s.predicted for s in scored]
    confidence = np.array([s.confidence for s in scored], dtype=float)
    correct = np.array([s.gold == s.predicted for s in scored], dtype=float)
    precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, labels=labels, zero_division=0)
    return {
        "examples": len(scored),
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, labels=labels, average="macro", zero_division=0)),
        "expected_calibration_error": expected_calibration_error(confidence, correct),
        "review_threshold": threshold_for_precision(confidence, correct, target_precision),
        "target_precision": target_precision,
        "per_class": {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
            for label, p, r, f, n in zip(labels, precision, recall, f1, support, strict=True)
        },
        "confusion_matrix": confusion_matrix(gold, predicted, labels=labels).tolist(),
        "labels": labels,
    }


def write_report(
    scored: Sequence[Scored],
    taxonomy: Taxonomy,
    directory: Path,
    *,
    title: str,
    routing: RoutingPolicy | None = None,
    target_precision: float = DEFAULT_REVIEW_PRECISION,
) -> dict[str, Any]:
    """metrics.json, confusion_matrix.csv/.png, calibration.png, routing.png, misclassified.csv, predictions.csv and
    report.md in `directory`. Closed-set metrics cover the questions whose gold label is one of `taxonomy`'s;
    `routing` (the adapter's policy) adds what goes to review and, when some questions are unknown, the open-set
    metrics."""
    routing = routing or RoutingPolicy()
    every = scored
    scored = [s for s in every if s.gold in taxonomy.names]
    metrics = evaluate(scored, taxonomy, target_precision=target_precision)
    metrics["routing"] = routing_figures(every, taxonomy, routing) | {
        "unknown_label": routing.unknown_label,
        "goal": routing.goal,
        "target": routing.target,
        "outside_distance": routing.outside_distance,
        "outside_goal": routing.outside_goal,
        "outside_target": routing.outside_target,
    }
    open_set = open_set_metrics(every, taxonomy, routing)
    if open_set is not None:
        metrics["open_set"] = open_set
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    labels = metrics["labels"]
    with (directory / "confusion_matrix.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["gold \\ predicted", *labels])
        writer.writerows([label, *row] for label, row in zip(labels, metrics["confusion_matrix"], strict=True))
    wrong = [s for s in scored if s.gold != s.predicted]
    with (directory / "misclassified.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "gold", "predicted", "confidence"])
        writer.writerows([s.text, s.gold, s.predicted, f"{s.confidence:.4f}"] for s in wrong)
    with (directory / "predictions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)  # every answer, unknown questions included: any other threshold can be studied
        writer.writerow(["text", "gold", "predicted", "confidence", "distance", "review_reason"])
        writer.writerows(
            [s.text, s.gold, s.predicted, repr(s.confidence), "" if s.distance is None else repr(s.distance),
             routing.review_reason(s.predicted, s.confidence, s.distance) or ""]
            for s in every
        )  # fmt: skip
    matrix = np.array(metrics["confusion_matrix"])
    confusions = top_confusions(matrix, labels)
    _plot_confusion(matrix, labels, directory / "confusion_matrix.png")
    _plot_top_confusions(confusions, directory / "top_confusions.png")
    _plot_calibration(scored, directory / "calibration.png")
    plot_routing(every, taxonomy, routing, directory / "routing.png")
    if routing.outside_distance is not None and all(s.distance is not None for s in every):
        plot_distances(every, taxonomy, routing, directory / "open_set.png")
    (directory / "report.md").write_text(_markdown(metrics, wrong, confusions, title), encoding="utf-8")
    return metrics


TOP_CONFUSIONS = 20


def top_confusions(matrix: np.ndarray, labels: list[str], k: int = TOP_CONFUSIONS) -> list[tuple[str, str, int, float]]:
    """The `k` most frequent mistakes as (gold, predicted, count, share of gold's examples): with 77 labels the
    matrix is too large to read, and these are what a reviewer acts on."""
    support = matrix.sum(axis=1)
    cells = [
        (int(matrix[g, p]), g, p) for g in range(len(labels)) for p in range(len(labels)) if g != p and matrix[g, p]
    ]
    cells.sort(key=lambda cell: (-cell[0], labels[cell[1]], labels[cell[2]]))
    return [(labels[g], labels[p], count, count / max(int(support[g]), 1)) for count, g, p in cells[:k]]


def _plot_top_confusions(confusions: list[tuple[str, str, int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, max(2.0, 0.32 * len(confusions) + 1)))
    names = [f"{gold} -> {predicted}" for gold, predicted, _, _ in confusions][::-1]
    counts = [count for _, _, count, _ in confusions][::-1]
    axes.barh(range(len(counts)), counts, color="tab:red")
    axes.set_yticks(range(len(counts)), names, fontsize=8)
    for y, (count, share) in enumerate(zip(counts, [share for *_, share in confusions][::-1], strict=True)):
        axes.text(count, y, f" {count} ({share:.0%} of gold)", va="center", fontsize=7)
    axes.set_xlabel("questions")
    axes.set_title(f"most frequent confusions (gold -> predicted), top {len(confusions)}")
    axes.margins(x=0.25)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_confusion(matrix: np.ndarray, labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = max(4.0, 0.35 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    normalized = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    axes.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7 if len(labels) > 20 else 9)
    axes.set_yticks(range(len(labels)), labels, fontsize=7 if len(labels) > 20 else 9)
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    if len(labels) <= 20:
        for (row, column), count in np.ndenumerate(matrix):
            if count:
                color = "white" if normalized[row, column] > 0.5 else "black"
                axes.text(column, row, str(count), ha="center", va="center", fontsize=8, color=color)
    axes.set_title("confusion matrix (rows normalized)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _plot_calibration(scored: Sequence[Scored], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confidence = np.array([s.confidence for s in scored])
    correct = np.array([s.gold == s.predicted for s in scored], dtype=float)
    edges = np.linspace(0, 1, CALIBRATION_BINS + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, CALIBRATION_BINS - 1)
    centers, accuracy, counts = [], [], []
    for b in range(CALIBRATION_BINS):
        mask = which == b
        if mask.any():
            centers.append(confidence[mask].mean())
            accuracy.append(correct[mask].mean())
            counts.append(int(mask.sum()))
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    axes.plot(centers, accuracy, marker="o", label="model")
    for x, y, n in zip(centers, accuracy, counts, strict=True):
        axes.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axes.set_xlabel("confidence")
    axes.set_ylabel("accuracy")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.legend(loc="upper left")
    axes.set_title("calibration (answers per bin annotated)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _markdown(
    metrics: dict[str, Any], wrong: Sequence[Scored], confusions: list[tuple[str, str, int, float]], title: str
) -> str:
    threshold = metrics["review_threshold"]
    review = (
        f"confidence >= {threshold['threshold']:.3f} routes {threshold['coverage']:.1%} of questions at "
        f"{threshold['precision']:.1%} precision; the rest go to review"
        if threshold
        else f"no threshold reaches {metrics['target_precision']:.0%} precision"
    )
    lines = [
        f"# {title}",
        "",
        f"- examples: {metrics['examples']}",
        f"- accuracy: {metrics['accuracy']:.4f}",
        f"- macro-F1: {metrics['macro_f1']:.4f}",
        f"- expected calibration error: {metrics['expected_calibration_error']:.4f}",
        f"- review threshold for {metrics['target_precision']:.0%} precision: {review}",
        f"- {_routing_line(metrics['routing'])}",
        *_open_set_lines(metrics.get("open_set")),
        "",
        "![confusion matrix](confusion_matrix.png) ![calibration](calibration.png) ![routing](routing.png)",
        "",
        "## Most frequent confusions",
        "",
        "![most frequent confusions](top_confusions.png)",
        "",
        "| gold | predicted | questions | share of gold |",
        "|---|---|---:|---:|",
        *(f"| {gold} | {predicted} | {count} | {share:.1%} |" for gold, predicted, count, share in confusions),
        "",
        "| label | precision | recall | F1 | support |",
        "|---|---:|---:|---:|---:|",
        *(
            f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | {row['support']} |"
            for label, row in metrics["per_class"].items()
        ),
        "",
        f"## Misclassified ({len(wrong)}; all in misclassified.csv)",
        "",
        "| text | gold | predicted | confidence |",
        "|---|---|---|---:|",
        *(
            f"| {s.text.replace('|', '/')[:120]} | {s.gold} | {s.predicted} | {s.confidence:.3f} |"
            for s in sorted(wrong, key=lambda s: -s.confidence)[:25]
        ),
        "",
    ]
    return "\n".join(lines)


def _routing_line(figures: dict[str, Any]) -> str:
    unknown = f", answers `{figures['unknown_label']}` too" if figures["unknown_label"] else ""
    line = (
        f"the adapter's routing (review under confidence {figures['review_threshold']:.3f}{unknown}): "
        f"{figures['coverage']:.1%} of questions routed, {figures['precision']:.1%} of those right"
    )
    if "unknown_recall" in figures:
        line += f", {figures['unknown_recall']:.1%} of unknown questions sent to review"
    return line


def _open_set_lines(open_set: dict[str, Any] | None) -> list[str]:
    if open_set is None:
        return []
    return [
        f"- open set ({open_set['unknown_questions']} of {open_set['questions']} questions unknown; unknown = one "
        f"more class, predicted by review): accuracy {open_set['accuracy']:.4f}, macro-F1 {open_set['macro_f1']:.4f}, "
        f"known-class accuracy {open_set['known_accuracy']:.4f}, unknown recall {open_set['unknown_recall']:.4f}, "
        f"unknown precision {open_set['unknown_precision']:.4f}",
        "- the closed-set figures above count only the questions whose label is one of the adapter's",
    ]
