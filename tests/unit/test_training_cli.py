"""`qcat train` and `qcat eval` through Typer's runner on the built-in model: an adapter with its report, and
bad data refused with the reasons."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from qcat.cli import app
from tests.unit.test_training import SUBJECTS, TEMPLATES

runner = CliRunner()


def write_learnable(path: Path) -> Path:
    rows = [{"text": t.format(s), "label": label} for label, ts in TEMPLATES.items() for t in ts for s in SUBJECTS]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_train_then_eval(tmp_path: Path) -> None:
    """train writes a loadable adapter with its report; eval of that adapter reproduces its accuracy."""
    data = write_learnable(tmp_path / "learn.jsonl")
    result = runner.invoke(
        app,
        [
            "train",
            str(data),
            "--out",
            str(tmp_path / "adapter"),
            "--base-model",
            "tiny-qwen3",
            "--epochs",
            "15",
            "--batch-size",
            "16",
            "--learning-rate",
            "2e-3",
            "--rank",
            "8",
            "--dtype",
            "float32",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["accuracy"] >= 0.9
    manifest = json.loads((tmp_path / "adapter" / "qcat-manifest.json").read_text())
    assert manifest["eval_fingerprint"]
    assert manifest["temperature"] > 0
    assert (tmp_path / "adapter" / "report" / "confusion_matrix.png").is_file()
    assert not (tmp_path / ".adapter.work").exists()
    evaluated = runner.invoke(
        app,
        [
            "eval",
            str(data),
            "--report",
            str(tmp_path / "report"),
            "--adapter",
            str(tmp_path / "adapter"),
            "--base-model",
            "tiny-qwen3",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["examples"] == 120


def test_bad_data_is_refused_with_reasons(tmp_path: Path) -> None:
    """Labels outside the given taxonomy stop training before any model is loaded, naming the rows."""
    data = write_learnable(tmp_path / "learn.jsonl")
    (tmp_path / "labels.txt").write_text("HUM\nLOC\n")
    result = runner.invoke(
        app,
        [
            "train",
            str(data),
            "--out",
            str(tmp_path / "a"),
            "--base-model",
            "tiny-qwen3",
            "--taxonomy",
            str(tmp_path / "labels.txt"),
        ],
    )
    assert result.exit_code == 2
    assert "outside the taxonomy" in result.output
    assert "NUM" in result.output
