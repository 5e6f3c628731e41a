"""`qcat train`, `eval`, `baseline` and `adapters` through Typer's runner on the built-in model: an adapter with its
report, bad data refused with the reasons, and the registry driven from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import Result
from safetensors.torch import load_file
from typer.testing import CliRunner

from qcat.cli import app
from qcat.errors import TrainingError
from qcat.manifest import read_manifest
from tests.unit.test_training import SUBJECTS, TEMPLATES

runner = CliRunner()
TINY = ("--base-model", "tiny-qwen3")
FAST_TRAINING = (*TINY, "--dtype", "float32", "--batch-size", "16", "--rank", "8")


def qcat(*args: object) -> Result:
    return runner.invoke(app, [str(arg) for arg in args])


def write_learnable(path: Path) -> Path:
    rows = [{"text": t.format(s), "label": label} for label, ts in TEMPLATES.items() for t in ts for s in SUBJECTS]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return path


def test_train_takes_the_lora_settings(tmp_path: Path) -> None:
    """--lora-alpha, --lora-dropout and --target-module reach peft's saved config; a misspelt layer stops early."""
    data = write_learnable(tmp_path / "learn.jsonl")
    result = qcat(
        "train", data, "--out", tmp_path / "adapter", "--epochs", 1, "--lora-alpha", 4, "--lora-dropout", 0.0,
        "--target-module", "q_proj", "--target-module", "down_proj", *FAST_TRAINING,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (8, 4, 0.0)
    assert sorted(config["target_modules"]) == ["down_proj", "q_proj"]
    refused = qcat("train", data, "--out", tmp_path / "other", "--target-module", "q_prj", *FAST_TRAINING)
    assert refused.exit_code != 0
    output = " ".join(refused.output.split())  # the console wraps long lines
    assert "q_prj" in output
    assert "its linear layers are" in output


def test_train_then_eval(tmp_path: Path) -> None:
    """train writes a loadable adapter with its report (and TensorBoard events when asked); eval reproduces it."""
    data = write_learnable(tmp_path / "learn.jsonl")
    result = qcat(
        "train",
        data,
        "--out",
        tmp_path / "adapter",
        "--epochs",
        15,
        "--learning-rate",
        "2e-3",
        "--report-to",
        "tensorboard",
        *FAST_TRAINING,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["accuracy"] >= 0.9
    manifest = json.loads((tmp_path / "adapter" / "qcat-manifest.json").read_text())
    assert manifest["eval_fingerprint"]
    assert manifest["temperature"] > 0
    assert (tmp_path / "adapter" / "report" / "confusion_matrix.png").is_file()
    assert list((tmp_path / "adapter" / "report" / "runs").rglob("events.out.tfevents.*"))
    epochs = (tmp_path / "adapter" / "report" / "training.csv").read_text().splitlines()[1:]
    assert len(epochs) >= 3
    assert summary["train_seconds_per_epoch"] > 0
    assert not (tmp_path / ".adapter.work").exists()
    assert "epoch done" in result.output  # not a terminal here: each epoch is a log line, not only a bar
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny-qwen3"  # Hub tools can tell the base
    assert (tmp_path / "adapter" / "README.md").read_text().startswith("---\nlibrary_name: peft\nbase_model:")
    evaluated = qcat("eval", data, "--report", tmp_path / "report", "--adapter", tmp_path / "adapter", *TINY)
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["examples"] == 120


def test_train_seeds_saves_their_soup(tmp_path: Path) -> None:
    """--seeds 2 trains two seeds on one split and saves their average at --out; the seeds stay beside it."""
    data = write_learnable(tmp_path / "learn.jsonl")
    out = tmp_path / "soup"
    result = qcat("train", data, "--out", out, "--epochs", 1, "--seeds", 2, "--seed", 3, *FAST_TRAINING)
    assert result.exit_code == 0, result.output
    seeds = [tmp_path / "soup.seeds" / f"seed{seed}" for seed in (3, 4)]
    manifests = [read_manifest(seed) for seed in seeds]
    soup = read_manifest(out)
    assert soup.ingredients == [manifest.version for manifest in manifests]
    # one split for all: the same training rows and held-out set (a seed drawing its own split would differ)
    assert {m.data_fingerprint for m in manifests} == {soup.data_fingerprint}
    assert {m.eval_fingerprint for m in manifests} == {soup.eval_fingerprint}
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2 * 8
    first, second = (load_file(str(seed / "adapter_model.safetensors")) for seed in seeds)
    assert any(not torch.equal(first[key], second[key]) for key in first if "lora_A" in key)  # two seeds, not one
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary["seeds"]) == {"seed3", "seed4"}
    assert summary["accuracy"] == soup.metrics["accuracy"]


def test_an_existing_out_is_refused_before_training(tmp_path: Path) -> None:
    data = write_learnable(tmp_path / "learn.jsonl")
    (tmp_path / "taken").mkdir()
    for seeds in (1, 2):
        result = qcat("train", data, "--out", tmp_path / "taken", "--seeds", seeds, *FAST_TRAINING)
        assert result.exit_code == 4
        assert "already exists" in result.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["learn.jsonl", "taken"]  # no work or seeds folder


def test_seeds_stop_on_bad_data_before_loading_and_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--seeds checks the data before the base model loads; a run that fails later removes its seeds folder."""
    from qcat.pytorch.model import build_tiny_qwen3
    from qcat.training import soup as soup_module

    data = write_learnable(tmp_path / "learn.jsonl")
    (tmp_path / "labels.txt").write_text("HUM\nLOC\n")
    loads: list[str] = []
    monkeypatch.setattr("qcat.pytorch.model.build_tiny_qwen3", lambda: loads.append("tiny-qwen3") or build_tiny_qwen3())
    refused = qcat("train", data, "--out", tmp_path / "a", "--seeds", 2, "--taxonomy", tmp_path / "labels.txt", *TINY)
    assert refused.exit_code == 4
    assert "outside the taxonomy" in refused.output
    assert loads == []

    def broken_soup(*args: object, **kwargs: object) -> None:
        raise TrainingError("the soup failed")

    monkeypatch.setattr(soup_module, "make_soup", broken_soup)
    failed = qcat("train", data, "--out", tmp_path / "b", "--epochs", 1, "--seeds", 2, *FAST_TRAINING)
    assert failed.exit_code == 4
    assert "the soup failed" in failed.output
    assert sorted(path.name for path in tmp_path.iterdir()) == ["labels.txt", "learn.jsonl"]


def test_cuda_only_options_are_refused_on_a_cpu_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--cuda-graphs and --autocast on a CPU stop `train` and `retrain` with what to do, before any model loads."""
    from qcat.pytorch.model import build_tiny_qwen3

    data = write_learnable(tmp_path / "learn.jsonl")
    loads: list[str] = []
    monkeypatch.setattr("qcat.pytorch.model.build_tiny_qwen3", lambda: loads.append("tiny-qwen3") or build_tiny_qwen3())
    commands = [
        ("train", data, "--out", tmp_path / "a", "--cuda-graphs"),
        ("train", data, "--out", tmp_path / "a", "--autocast", "--seeds", 2),
        ("retrain", "--data", data, "--corrections", tmp_path / "none", "--eval", data, "--registry",
         tmp_path / "registry", "--work", tmp_path / "work", "--cuda-graphs"),
    ]  # fmt: skip
    for command in commands:
        refused = qcat(*command, "--device", "cpu", *TINY)
        assert refused.exit_code == 2, refused.output
        assert "need a CUDA device" in " ".join(refused.output.split())
    assert loads == []
    assert sorted(path.name for path in tmp_path.iterdir()) == ["learn.jsonl"]


def test_bad_data_is_refused_with_reasons(tmp_path: Path) -> None:
    """Labels outside the given taxonomy stop training before any model is loaded, naming the rows."""
    data = write_learnable(tmp_path / "learn.jsonl")
    (tmp_path / "labels.txt").write_text("HUM\nLOC\n")
    result = qcat("train", data, "--out", tmp_path / "a", "--taxonomy", tmp_path / "labels.txt", *TINY)
    assert result.exit_code == 4
    assert "outside the taxonomy" in result.output
    assert "NUM" in result.output


def test_training_can_continue_an_adapter(tmp_path: Path) -> None:
    """--init-adapter starts from the adapter's weights: one epoch at a negligible learning rate keeps its accuracy
    (a fresh adapter trained that way stays near chance, see the registry test's weak adapter)."""
    data = write_learnable(tmp_path / "learn.jsonl")
    first = qcat("train", data, "--out", tmp_path / "v1", "--epochs", 15, "--learning-rate", "2e-3", *FAST_TRAINING)
    assert first.exit_code == 0, first.output
    again = qcat(
        "train", data, "--out", tmp_path / "v2", "--init-adapter", tmp_path / "v1", "--epochs", 1,
        "--learning-rate", "1e-9", *FAST_TRAINING,
    )  # fmt: skip
    assert again.exit_code == 0, again.output
    v1 = json.loads((tmp_path / "v1" / "qcat-manifest.json").read_text())
    v2 = json.loads((tmp_path / "v2" / "qcat-manifest.json").read_text())
    assert v2["parent_version"] == v1["version"]
    assert v2["metrics"]["accuracy"] >= 0.9
    assert abs(v2["metrics"]["accuracy"] - v1["metrics"]["accuracy"]) <= 0.05


def test_unknown_reporter_is_refused_before_loading(tmp_path: Path) -> None:
    data = write_learnable(tmp_path / "learn.jsonl")
    result = qcat("train", data, "--out", tmp_path / "a", "--report-to", "nonsense", *TINY)
    assert result.exit_code == 2
    assert "cannot report to 'nonsense'" in result.output
    assert "tensorboard" in result.output  # listed as available


def test_baseline_and_registry_commands(tmp_path: Path) -> None:
    """baseline writes a zero-shot report; adapters add/promote/list/show/rollback drive the registry (3 = refused)."""
    data = write_learnable(tmp_path / "learn.jsonl")
    (tmp_path / "labels.txt").write_text("HUM\nLOC\nNUM\n")
    zero_shot = qcat("baseline", data, "--report", tmp_path / "zs", "--taxonomy", tmp_path / "labels.txt", *TINY)
    assert zero_shot.exit_code == 0, zero_shot.output
    assert "zero-shot baseline" in (tmp_path / "zs" / "report.md").read_text()
    weak = qcat("train", data, "--out", tmp_path / "weak", "--epochs", 1, "--learning-rate", "1e-6", *FAST_TRAINING)
    strong = qcat(
        "train", data, "--out", tmp_path / "strong", "--epochs", 15, "--learning-rate", "2e-3", *FAST_TRAINING
    )
    assert weak.exit_code == 0, weak.output
    assert strong.exit_code == 0, strong.output
    registry = ("--registry", tmp_path / "registry")
    versions = {}
    for name in ("strong", "weak"):
        added = qcat("adapters", "add", tmp_path / name, *registry)
        assert added.exit_code == 0, added.output
        versions[name] = json.loads((tmp_path / name / "qcat-manifest.json").read_text())["version"]
    assert qcat("adapters", "promote", versions["strong"], *registry).exit_code == 0
    refused = qcat("adapters", "promote", versions["weak"], *registry)
    assert refused.exit_code == 3, refused.output
    assert "worse" in refused.output
    listed = qcat("adapters", "list", "--json", *registry)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert {row["version"]: row["current"] for row in rows} == {versions["strong"]: True, versions["weak"]: False}
    assert qcat("adapters", "list", *registry).exit_code == 0
    shown = qcat("adapters", "show", versions["weak"], *registry)
    assert json.loads(shown.stdout)["version"] == versions["weak"]
    assert qcat("adapters", "promote", versions["weak"], "--force", *registry).exit_code == 0
    back = qcat("adapters", "rollback", *registry)
    assert back.exit_code == 0, back.output
    assert versions["strong"] in back.output


def test_an_unknown_label_trains_chooses_its_threshold_and_eval_measures_the_open_set(tmp_path: Path) -> None:
    """--unknown-label and --unknown-recall end in the manifest's routing policy, met on the held-out rows; eval on
    data with labels outside the adapter's counts them as unknown questions (open-set metrics) instead of refusing."""
    rows = [json.loads(line) for line in write_learnable(tmp_path / "learn.jsonl").read_text().splitlines()]
    chatter = ["I like {}.", "Tell {} hello.", "{} is nice.", "Thanks for {}."]
    rows += [{"text": t.format(s), "label": "NONE"} for t in chatter for s in SUBJECTS]
    data = tmp_path / "with-none.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    goal = ("--unknown-label", "NONE", "--unknown-recall", 0.8)
    result = qcat(
        "train", data, "--out", tmp_path / "adapter", "--epochs", 8, "--learning-rate", "2e-3", *goal, *FAST_TRAINING
    )
    assert result.exit_code == 0, result.output
    routing = read_manifest(tmp_path / "adapter").routing
    assert (routing.goal, routing.target, routing.unknown_label) == ("unknown_recall", 0.8, "NONE")
    assert routing.expected["unknown_recall"] >= 0.8

    test = tmp_path / "test.jsonl"
    outside = [{"text": f"Why did {s} fall?", "label": "WHY"} for s in SUBJECTS]
    test.write_text("\n".join(json.dumps(row) for row in rows[::3] + outside) + "\n")
    report = tmp_path / "report"
    evaluated = qcat("eval", test, "--adapter", tmp_path / "adapter", "--report", report, *TINY)
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((report / "metrics.json").read_text())
    unknown = sum(row["label"] in ("NONE", "WHY") for row in rows[::3] + outside)
    assert metrics["open_set"]["unknown_questions"] == unknown
    assert metrics["examples"] == len(rows[::3])  # closed-set figures: the adapter's own labels only
    assert metrics["routing"]["review_threshold"] == routing.review_threshold
    assert 0.0 <= metrics["open_set"]["macro_f1"] <= 1.0
    assert (report / "routing.png").is_file()
    assert "open set" in (report / "report.md").read_text()


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (("--unknown-label", "MISSING"), "is not one of the labels"),
        (("--unknown-recall", 0.9), "needs --unknown-label"),
        (("--unknown-recall", 0.9, "--review-coverage", 0.9), "two goals: give one"),
    ],
)
def test_an_impossible_routing_goal_is_refused_before_loading(
    tmp_path: Path, options: tuple[object, ...], said: str
) -> None:
    data = write_learnable(tmp_path / "learn.jsonl")
    result = qcat("train", data, "--out", tmp_path / "adapter", *options, "--base-model", "/nonexistent")
    assert result.exit_code == 2, result.output
    assert said in " ".join(result.output.split())
