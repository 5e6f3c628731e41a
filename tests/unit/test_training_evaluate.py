"""The evaluation report: metrics that match hand counts, calibration error, review threshold, and the files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from qcat.schemas.taxonomy import Taxonomy
from qcat.training.data import Scored
from qcat.training.evaluate import evaluate, expected_calibration_error, write_report
from qcat.training.open_set import threshold_for_precision

TAXONOMY = Taxonomy.from_names(["HUM", "LOC", "NUM"])
SCORED = [
    Scored("Who ?", "HUM", "HUM", 0.9),
    Scored("Who else ?", "HUM", "LOC", 0.6),
    Scored("Where ?", "LOC", "LOC", 0.8),
    Scored("How many ?", "NUM", "NUM", 0.95),
]


def test_metrics_match_hand_counts() -> None:
    """3 of 4 right; HUM recall 1/2, LOC precision 1/2; the confusion matrix counts each pair."""
    metrics = evaluate(SCORED, TAXONOMY)
    assert metrics["accuracy"] == 0.75
    assert metrics["per_class"]["HUM"]["recall"] == 0.5
    assert metrics["per_class"]["LOC"]["precision"] == 0.5
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_calibration_error() -> None:
    """Perfectly calibrated answers have ECE 0; always-confident wrong answers have ECE 1."""
    assert expected_calibration_error(np.array([0.25, 0.25, 0.25, 0.25]), np.array([1.0, 0, 0, 0])) == pytest.approx(0)
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([0.0, 0.0])) == pytest.approx(1)


def test_review_threshold_meets_target_precision() -> None:
    """The threshold routes the most questions whose precision still meets the target."""
    confidence = np.array([0.95, 0.9, 0.8, 0.6])
    correct = np.array([1.0, 1.0, 1.0, 0.0])
    assert threshold_for_precision(confidence, correct, 0.95) == {"threshold": 0.8, "precision": 1.0, "coverage": 0.75}
    assert threshold_for_precision(np.array([0.9]), np.array([0.0]), 0.5) is None


def test_report_files(tmp_path: Path) -> None:
    """report.md, metrics.json, both plots and both CSVs are written and agree with each other."""
    metrics = write_report(SCORED, TAXONOMY, tmp_path, title="test report")
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]
    for name in ("confusion_matrix.png", "calibration.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (tmp_path / "misclassified.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["text"], r["gold"], r["predicted"]) for r in rows] == [("Who else ?", "HUM", "LOC")]
    report = (tmp_path / "report.md").read_text()
    assert "accuracy: 0.7500" in report
    assert "| Who else ? | HUM | LOC | 0.600 |" in report
