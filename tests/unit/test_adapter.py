"""Adapters: saved as safetensors + manifest, reloaded merged to the same predictions, mismatches refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from qcat.engine import EngineSpec
from qcat.errors import AdapterError, OutputExistsError
from qcat.lora import LoraSpec
from qcat.manifest import MANIFEST, WEIGHTS, AdapterManifest
from qcat.pytorch.adapter import load_adapter, new_lora, save_adapter
from qcat.pytorch.engine import build_engine, load_engine
from qcat.pytorch.model import LoadedModel, attach_label_head, label_logits, load_base_model
from qcat.schemas.prompt import prompt_format
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings

TAXONOMY = Taxonomy.from_names(["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"])
QUESTIONS = ["Who was Galileo ?", "What does NASA stand for ?", "How far is it from Denver to Aspen ?"]


def make_adapter(base: LoadedModel, directory: Path, **manifest_fields: object) -> tuple[PeftModel, Path]:
    """A LoRA with non-zero (random) weights, as if trained, saved through the production code path."""
    model = new_lora(base, TAXONOMY, LoraSpec(rank=4, alpha=8))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name or "label_head" in name:
                parameter.normal_(0, 0.05)
    fields: dict[str, object] = {
        "version": "v1",
        "taxonomy": TAXONOMY,
        "base_model": base.name,
        "base_fingerprint": base.fingerprint,
        "max_question_tokens": 32,
    }
    fields.update(manifest_fields)
    return model, save_adapter(model, AdapterManifest.model_validate(fields), directory)


def test_saved_adapter_reloads_to_the_same_predictions(
    tiny: LoadedModel, fresh_tiny: Callable[[], LoadedModel], tmp_path: Path
) -> None:
    """The merged, reloaded adapter gives the unmerged trained model's logits, head included (peft's pitfall)."""
    trained, directory = make_adapter(tiny, tmp_path / "v1")
    assert (directory / WEIGHTS).is_file()
    assert not list(directory.glob("*.bin"))
    engine = load_engine(EngineSettings(base_model="tiny-qwen3", adapter=directory, dtype="float32", device="cpu"))
    assert engine.adapter_version == "v1"
    assert engine.prompt.style == "compact"
    encoded = engine.encode(QUESTIONS)
    served = torch.from_numpy(engine.logits(encoded.ids))
    trained.eval()
    with torch.no_grad():
        for row, ids in enumerate(encoded.ids):
            expected = label_logits(trained.get_base_model(), torch.tensor([ids]), torch.tensor([len(ids) - 1]))
            torch.testing.assert_close(served[row], expected[0], rtol=1e-4, atol=1e-4)
    untrained = fresh_tiny()
    attach_label_head(untrained, TAXONOMY)
    zero_shot = build_engine(
        untrained, EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "compact"), 32), EngineSettings(batch_size=8)
    )
    assert not torch.allclose(served, torch.from_numpy(zero_shot.logits(encoded.ids))), "adapter had no effect"


def test_adapter_for_another_base_model_is_refused(tiny: LoadedModel, tmp_path: Path) -> None:
    """A fingerprint mismatch names both models and says which base model to load."""
    _, directory = make_adapter(tiny, tmp_path / "v1", base_model="Qwen/Qwen3-0.6B", base_fingerprint="0" * 16)
    with pytest.raises(AdapterError, match=r"--base-model Qwen/Qwen3-0\.6B"):
        load_adapter(tiny, directory)


def test_adapter_for_other_labels_is_refused(tiny: LoadedModel, tmp_path: Path) -> None:
    """An explicitly configured taxonomy that differs from the adapter's is refused."""
    _, directory = make_adapter(tiny, tmp_path / "v1")
    with pytest.raises(AdapterError, match="predicts labels"):
        load_adapter(tiny, directory, Taxonomy.from_names(["yes", "no"]))


def test_unknown_format_is_refused(tiny: LoadedModel, tmp_path: Path) -> None:
    """A manifest from a future qcat (format version 2) is refused with a retrain hint."""
    _, directory = make_adapter(tiny, tmp_path / "v1")
    manifest = json.loads((directory / MANIFEST).read_text())
    manifest["format_version"] = 2
    (directory / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(AdapterError, match="Retrain"):
        load_adapter(tiny, directory)


def test_pickle_weights_are_never_loaded(tiny: LoadedModel, tmp_path: Path) -> None:
    """An adapter whose weights are a pickle (.bin) is refused: safetensors only."""
    _, directory = make_adapter(tiny, tmp_path / "v1")
    state = {"x": torch.zeros(1)}
    torch.save(state, directory / "adapter_model.bin")
    (directory / WEIGHTS).unlink()
    with pytest.raises(AdapterError, match="pickle files are never loaded"):
        load_adapter(tiny, directory)


@pytest.mark.parametrize("damage", ["truncate_weights", "drop_manifest", "garble_manifest"])
def test_damaged_adapter_is_refused(tiny: LoadedModel, tmp_path: Path, damage: str) -> None:
    """Corrupt weights, a missing manifest (half-written directory) or a garbled manifest raise AdapterError."""
    _, directory = make_adapter(tiny, tmp_path / "v1")
    if damage == "truncate_weights":
        data = (directory / WEIGHTS).read_bytes()
        (directory / WEIGHTS).write_bytes(data[: len(data) // 2])
    elif damage == "drop_manifest":
        (directory / MANIFEST).unlink()
    else:
        (directory / MANIFEST).write_text("{not json")
    with pytest.raises(AdapterError):
        load_adapter(tiny, directory)


def test_adapters_are_immutable(tiny: LoadedModel, tmp_path: Path) -> None:
    """Saving over an existing adapter directory is refused."""
    model, directory = make_adapter(tiny, tmp_path / "v1")
    manifest = AdapterManifest.model_validate_json((directory / MANIFEST).read_text())
    with pytest.raises(OutputExistsError, match="already exists"):
        save_adapter(model, manifest, directory)


def test_a_bf16_base_model_trains_every_weight_in_float32() -> None:
    """bf16 weights would drop Adam's small updates to rounding: LoRA (peft) and the head (qcat) train in float32."""

    base = load_base_model("tiny-qwen3", device=torch.device("cpu"), dtype=torch.bfloat16)
    model = new_lora(base, TAXONOMY, LoraSpec(rank=4, alpha=8))
    trainable = {name: p.dtype for name, p in model.named_parameters() if p.requires_grad}
    assert any("label_head" in name for name in trainable)
    assert set(trainable.values()) == {torch.float32}
    logits = label_logits(model.get_base_model(), torch.tensor([[1, 2, 3]]), torch.tensor([2]))
    assert logits.dtype == torch.float32
    assert logits.shape == (1, len(TAXONOMY.labels))


def test_the_head_computes_in_float32_under_autocast(tiny: LoadedModel) -> None:
    """`qcat train --autocast` puts the decoder's matmuls in bf16, not the head's: it scores as at serving time."""
    model = new_lora(tiny, TAXONOMY, LoraSpec(rank=4, alpha=8))
    lm, ids, last = model.get_base_model(), torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]]), torch.tensor([3, 2])
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        logits = label_logits(lm, ids, last)
        rows = lm.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state[torch.arange(2), last].float()
        assert lm.label_head(rows).dtype == torch.bfloat16  # what the head would compute if autocast reached it
    with torch.no_grad():
        expected = lm.label_head(rows)
    assert expected.dtype == torch.float32
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def test_lora_adapts_exactly_the_named_layers(tiny: LoadedModel) -> None:
    """A subset of layers gets LoRA weights and no other layer does."""
    model = new_lora(tiny, TAXONOMY, LoraSpec(rank=4, alpha=8, targets=("q_proj", "v_proj")))
    adapted = {name.split(".")[-4] for name, _ in model.named_parameters() if name.endswith("lora_A.default.weight")}
    assert adapted == {"q_proj", "v_proj"}


@pytest.mark.parametrize("targets", [("q_proj", "qproj"), ("label_head",), ()])
def test_unknown_lora_targets_are_refused_naming_the_layers(tiny: LoadedModel, targets: tuple[str, ...]) -> None:
    """peft would silently skip a misspelt name while another one matches: refused, with the layers to choose from."""
    with pytest.raises(AdapterError, match=r"not linear layers of tiny-qwen3.*'down_proj'"):
        new_lora(tiny, TAXONOMY, LoraSpec(targets=targets))
