"""`qcat classify` through Typer's runner, on the built-in model."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import Result
from typer.testing import CliRunner

from qcat import __version__
from qcat.cli import app
from qcat.pytorch.model import LoadedModel
from qcat.schemas.taxonomy import Taxonomy
from tests.helpers.adapters import untrained_adapter

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


def test_an_adapter_brings_its_own_base_model(
    fresh_tiny: Callable[[], LoadedModel], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no --base-model and no QCAT_BASE_MODEL, `--adapter` loads on the base model its manifest names (here the
    built-in one) instead of the default hub model, which cannot be downloaded here."""
    monkeypatch.delenv("QCAT_BASE_MODEL", raising=False)
    adapter = untrained_adapter(fresh_tiny(), Taxonomy.from_names(["HUM", "LOC"]), "v-own-base", tmp_path / "a")
    result = runner.invoke(app, ["classify", "--adapter", str(adapter), "--json", "Where is Paris ?"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["label"] in {"HUM", "LOC"}


def one_error(result: Result, code: int, *needles: str) -> None:
    """The command failed with `code` and one `error:` line holding `needles`, and no traceback."""
    assert result.exit_code == code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    flat = " ".join(result.output.split())  # rich wraps long lines
    assert all(needle in flat for needle in needles), result.output
    assert "Traceback" not in result.output


def test_bad_input_files_are_one_error_line_with_the_input_code(tmp_path: Path) -> None:
    """An empty data file (train and eval), a label file with a duplicate, and a --report folder that already holds
    files each end with exit 4 and one line saying what to do."""
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "labels.txt").write_text("HUM\nLOC\nHUM\n")
    (tmp_path / "learn.jsonl").write_text('{"text": "Who ?", "label": "HUM"}\n{"text": "Where ?", "label": "LOC"}\n')
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "report.md").write_text("an earlier report")
    tiny = ["--base-model", "tiny-qwen3"]
    one_error(
        runner.invoke(app, ["train", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "a"), *tiny]),
        4,
        "no labeled rows",
    )
    one_error(
        runner.invoke(app, ["eval", str(tmp_path / "empty.jsonl"), "--report", str(tmp_path / "r"), *tiny]),
        4,
        "no labeled rows",
    )
    one_error(
        runner.invoke(
            app,
            [
                "train",
                str(tmp_path / "learn.jsonl"),
                "--out",
                str(tmp_path / "b"),
                "--taxonomy",
                str(tmp_path / "labels.txt"),
                *tiny,
            ],
        ),
        4,
        "duplicate label names",
    )
    one_error(
        runner.invoke(app, ["baseline", str(tmp_path / "learn.jsonl"), "--report", str(tmp_path / "taken"), *tiny]),
        4,
        "--overwrite",
    )
    assert (tmp_path / "taken" / "report.md").read_text() == "an earlier report"


def test_bad_settings_are_one_usage_error_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A setting that does not validate, an unknown dtype, and a CUDA device on a machine without one end with exit 2
    and a line naming the setting, before any model loads."""
    monkeypatch.setenv("QCAT_MAX_BATCH", "abc")
    one_error(runner.invoke(app, ["worker"]), 2, "QCAT_MAX_BATCH", "'abc'")
    monkeypatch.delenv("QCAT_MAX_BATCH")
    tiny = ["classify", "--base-model", "tiny-qwen3"]
    one_error(runner.invoke(app, [*tiny, "--dtype", "float64", "Why ?"]), 2, "QCAT_DTYPE")
    one_error(runner.invoke(app, [*tiny, "--quantize", "int4", "Why ?"]), 2, "QCAT_QUANTIZE")
    if not torch.cuda.is_available():
        monkeypatch.setenv("QCAT_DEVICE", "cuda")
        one_error(runner.invoke(app, [*tiny, "Why ?"]), 2, "no usable CUDA device")


def test_the_command_line_says_what_it_is_and_what_it_reads(tmp_path: Path) -> None:
    """--version prints the version; --help keeps the [env: QCAT_...] hints; `worker --settings` lists every
    setting (the password's name, never a value); `adapters add` prints the new version on stdout for scripts."""
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0
    assert version.stdout.strip() == f"qcat {__version__}"
    assert "[env: QCAT_BROKERS]" in runner.invoke(app, ["worker", "--help"], terminal_width=200).output
    assert "<bool>" not in runner.invoke(app, ["train", "--help"], terminal_width=200).output
    listed = runner.invoke(app, ["worker", "--settings"], terminal_width=200, env={"QCAT_SASL_PASSWORD": "hunter2"})
    assert listed.exit_code == 0
    assert "QCAT_SASL_PASSWORD" in listed.output
    assert "QCAT_PUBLISH_STALL_TIMEOUT" in listed.output
    assert "hunter2" not in listed.output
    assert "what would run here" in listed.output
    if not torch.cuda.is_available():
        assert "passes: padded" in listed.output
        assert "micro_batch: 64" in listed.output


def test_every_command_s_help_loads_no_torch() -> None:
    """`--help` of the root and of every command answers without importing torch, transformers or peft."""
    probe = """
import sys
from typer.main import get_command
from typer.testing import CliRunner
from qcat.cli import app
runner = CliRunner()
names = ["", *get_command(app).commands]
for name in names:
    assert runner.invoke(app, [*filter(None, [name]), "--help"]).exit_code == 0, name
print(len(names), sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    count, loaded = done.stdout.strip().split(" ", 1)
    assert int(count) > 10
    assert loaded == "[]"


def test_every_doc_that_names_an_exit_code_agrees_with_the_table() -> None:
    """An exit code a doc mentions ("exits with code N", "status N") is one of docs/cli.md's, with its meaning."""
    import re

    docs = Path(__file__).resolve().parents[2] / "docs"
    table = {int(code) for code in re.findall(r"^\| (\d+) \|", (docs / "cli.md").read_text(), re.MULTILINE)}
    assert {0, 1, 2, 3, 4, 5, 70, 71} <= table
    mentioned = re.compile(r"(?:exits? with code|exits? with status|status) (\d+)")
    for path in docs.glob("*.md"):
        for code in mentioned.findall(" ".join(path.read_text().split())):
            assert int(code) in table, f"{path.name} names exit code {code}, which docs/cli.md does not list"
    worker = " ".join((docs / "worker.md").read_text().split())
    assert "exits with code 5" in worker  # a failed connection to Kafka: environment, as the table says


def test_a_registry_that_is_not_there_is_an_error_not_a_zero_shot_model(tmp_path: Path) -> None:
    """A misspelt or unmounted QCAT_REGISTRY, or one with nothing promoted, stops with exit 5 and one line saying
    what to do; `--zero-shot` (QCAT_ZERO_SHOT) asks for the base model on purpose."""
    from qcat.errors import RegistryError
    from qcat.serving import adapter_to_serve
    from qcat.settings import EngineSettings

    missing = EngineSettings(registry=str(tmp_path / "nowhere"))
    with pytest.raises(RegistryError, match="does not exist"):
        adapter_to_serve(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="no promoted version"):
        adapter_to_serve(EngineSettings(registry=str(tmp_path / "empty")))
    assert adapter_to_serve(missing.model_copy(update={"zero_shot": True})) is None
    one_error(runner.invoke(app, ["classify", "--registry", str(tmp_path / "nowhere"), "Why ?"]), 5, "QCAT_ZERO_SHOT")


def test_a_port_that_is_taken_is_one_error_before_anything_starts(tmp_path: Path) -> None:
    """`qcat broker` on a port already in use exits 5 at once instead of reporting another process as its own."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_error(runner.invoke(app, ["broker", "--port", str(port)]), 5, "is taken")


def test_send_and_eval_check_their_inputs_first(tmp_path: Path) -> None:
    """Rows without text, a line that is not JSON, a CSV without a text column: one error line naming the row; a
    --report that is a file: one error line before any question is classified."""
    for name, content, expected in (
        ("rows.jsonl", '{"label": "HUM"}\n', "rows.jsonl:1 has no text"),
        ("bad.jsonl", "not json\n", "bad.jsonl:1 is not JSON"),
        ("rows.csv", "question,label\nWho ?,HUM\n", "no text column"),
    ):
        path = tmp_path / name
        path.write_text(content)
        one_error(runner.invoke(app, ["send", str(path)]), 4, expected)
    report = tmp_path / "report.md"
    report.write_text("a file")
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "Who ?", "label": "HUM"}\n')
    tiny = ("--base-model", "tiny-qwen3")
    one_error(runner.invoke(app, ["eval", str(data), "--report", str(report), *tiny]), 4, "is a file")
