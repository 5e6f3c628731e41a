"""`qcat classify` through Typer's runner, on the built-in model."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from qcat.cli import app

runner = CliRunner()


def test_classify_json_lines() -> None:
    """--json prints one object per question with a taxonomy label and a confidence."""
    result = runner.invoke(app, ["classify", "--base-model", "tiny-qwen3", "--json", "Who was Galileo ?", "Why ?"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [row["text"] for row in rows] == ["Who was Galileo ?", "Why ?"]
    assert all(row["label"] in {"ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"} for row in rows)
    assert all(0 < row["confidence"] <= 1 for row in rows)


def test_classify_bad_adapter_is_a_clear_error(tmp_path: object) -> None:
    """A missing adapter directory exits with the input-error code (4) and a message, not a traceback."""
    result = runner.invoke(app, ["classify", "--base-model", "tiny-qwen3", "--adapter", "/nonexistent", "Why ?"])
    assert result.exit_code == 4
    assert "does not exist" in result.output
    assert "Traceback" not in result.output
