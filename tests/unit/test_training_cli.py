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


def test_baseline_and_registry_commands(tmp_path: Path) -> None:
    """baseline writes a zero-shot report; adapters add/promote/list/show/rollback drive the registry (3 = refused)."""
    data = write_learnable(tmp_path / "learn.jsonl")
    (tmp_path / "labels.txt").write_text("HUM\nLOC\nNUM\n")
    zero_shot = runner.invoke(
        app,
        [
            "baseline",
            str(data),
            "--report",
            str(tmp_path / "zs"),
            "--base-model",
            "tiny-qwen3",
            "--taxonomy",
            str(tmp_path / "labels.txt"),
        ],
    )
    assert zero_shot.exit_code == 0, zero_shot.output
    assert "zero-shot baseline" in (tmp_path / "zs" / "report.md").read_text()
    common = ["--base-model", "tiny-qwen3", "--dtype", "float32", "--batch-size", "16", "--rank", "8"]
    weak = runner.invoke(
        app, ["train", str(data), "--out", str(tmp_path / "weak"), "--epochs", "1", "--learning-rate", "1e-6", *common]
    )
    strong = runner.invoke(
        app,
        ["train", str(data), "--out", str(tmp_path / "strong"), "--epochs", "15", "--learning-rate", "2e-3", *common],
    )
    assert weak.exit_code == 0, weak.output
    assert strong.exit_code == 0, strong.output
    registry = ["--registry", str(tmp_path / "registry")]
    versions = {}
    for name in ("strong", "weak"):
        added = runner.invoke(app, ["adapters", "add", str(tmp_path / name), *registry])
        assert added.exit_code == 0, added.output
        versions[name] = json.loads((tmp_path / name / "qcat-manifest.json").read_text())["version"]
    assert runner.invoke(app, ["adapters", "promote", versions["strong"], *registry]).exit_code == 0
    refused = runner.invoke(app, ["adapters", "promote", versions["weak"], *registry])
    assert refused.exit_code == 3, refused.output
    assert "worse" in refused.output
    listed = runner.invoke(app, ["adapters", "list", "--json", *registry])
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {row["version"]: row["current"] for row in rows} == {versions["strong"]: True, versions["weak"]: False}
    assert runner.invoke(app, ["adapters", "list", *registry]).exit_code == 0
    shown = runner.invoke(app, ["adapters", "show", versions["weak"], *registry])
    assert json.loads(shown.stdout)["version"] == versions["weak"]
    assert runner.invoke(app, ["adapters", "promote", versions["weak"], "--force", *registry]).exit_code == 0
    back = runner.invoke(app, ["adapters", "rollback", *registry])
    assert back.exit_code == 0, back.output
    assert versions["strong"] in back.output
