"""Base-model loading: the built-in model, a local directory, a GGUF file, and a clear error when offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qcat.errors import ModelLoadError
from qcat.pytorch.model import LoadedModel, load_base_model
from qcat.pytorch.tiny import build_tiny_qwen3
from tests.helpers.gguf_export import export_gguf

CPU = torch.device("cpu")
IDS = torch.tensor([[346, 318, 428, 296, 755, 79, 261]])


def test_tiny_model_is_deterministic(tiny: LoadedModel) -> None:
    """tiny-qwen3 rebuilds bit-identically, so adapters trained on it reload onto the same weights."""
    again = load_base_model("tiny-qwen3", device=CPU, dtype=torch.float32)
    assert again.fingerprint == tiny.fingerprint
    assert again.offline_builtin
    torch.testing.assert_close(again.lm(IDS).logits, tiny.lm(IDS).logits, rtol=0, atol=0)


def test_fingerprint_tells_models_apart(tiny: LoadedModel) -> None:
    """A model with other weights (another seed) has another fingerprint."""
    other, _ = build_tiny_qwen3(seed=1)
    from qcat.pytorch.model import fingerprint

    assert fingerprint(other) != tiny.fingerprint


def test_local_directory_and_gguf_load_the_same_model(tiny: LoadedModel, tmp_path: Path) -> None:
    """A saved directory and a GGUF export load to the same logits and fingerprint as the original."""
    tiny.lm.save_pretrained(tmp_path / "dir")
    tiny.tokenizer.save_pretrained(tmp_path / "dir")
    export_gguf(tiny.lm, tiny.tokenizer, tmp_path / "tiny.gguf")
    expected = tiny.lm(IDS).logits
    for source in (tmp_path / "dir", tmp_path / "tiny.gguf"):
        loaded = load_base_model(str(source), device=CPU, dtype=torch.float32)
        assert loaded.fingerprint == tiny.fingerprint, source
        assert not loaded.offline_builtin
        torch.testing.assert_close(loaded.lm(IDS).logits, expected, rtol=1e-5, atol=1e-5)


def test_unreachable_model_says_what_to_do(tmp_path: Path) -> None:
    """A model that cannot be loaded (here: an empty directory) raises ModelLoadError with the offline options."""
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="tiny-qwen3"):
        load_base_model(str(tmp_path / "empty"), device=CPU, dtype=torch.float32)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_base_model(str(tmp_path / "missing.gguf"), device=CPU, dtype=torch.float32)


def test_training_on_a_gguf_base_prints_no_library_warnings(tiny: LoadedModel, tmp_path: Path) -> None:
    """peft's "Could not find a config file" (a GGUF base has no config.json) is not shown at each save: with
    pytest turning warnings into errors, one escaping would fail this run."""
    from typer.testing import CliRunner

    from qcat.cli import app

    export_gguf(tiny.lm, tiny.tokenizer, tmp_path / "tiny.gguf")
    rows = [{"text": f"Who made thing {i}?", "label": "HUM"} for i in range(20)]
    rows += [{"text": f"Where is place {i}?", "label": "LOC"} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    options = ["--base-model", str(tmp_path / "tiny.gguf"), "--epochs", "2", "--dtype", "float32"]
    result = CliRunner().invoke(app, ["train", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "a"), *options])
    assert result.exit_code == 0, result.output
    assert "Could not find a config file" not in result.output


def test_library_logs_go_through_qcat_s_renderer(tiny: LoadedModel) -> None:
    """Once a model loads, transformers' and the hub's records propagate to the root logger (qcat's JSON renderer in
    the worker) instead of their own plain-text handlers."""
    import logging

    for name in ("transformers", "huggingface_hub"):
        library = logging.getLogger(name)
        assert library.propagate, name
        # pytest attaches its capture handlers to loggers that did not propagate when the test began
        own = [handler for handler in library.handlers if not type(handler).__module__.startswith("_pytest")]
        assert not own, name
