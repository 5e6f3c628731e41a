"""Adapter soups on tiny-qwen3: the averaged adapter applies exactly the mean of its ingredients' weight updates and
heads, is calibrated and evaluated like `qcat train`'s output, and mismatched adapters are refused."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from qcat.errors import AdapterError
from qcat.lora import LoraSpec
from qcat.manifest import AdapterManifest, read_manifest
from qcat.pytorch.adapter import load_adapter, new_lora, save_adapter
from qcat.pytorch.engine import load_engine
from qcat.pytorch.model import LoadedModel, attach_label_head, label_logits
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings
from qcat.training.data import load_examples
from qcat.training.soup import make_soup, soup_weights
from tests.unit.test_training_cli import qcat, write_learnable

TAXONOMY = Taxonomy.from_names(["HUM", "LOC", "NUM"])
SETTINGS = EngineSettings(base_model="tiny-qwen3", device="cpu", dtype="float32")


def random_adapter(base: LoadedModel, directory: Path, seed: int, taxonomy: Taxonomy = TAXONOMY) -> Path:
    """A LoRA with random non-zero weights and head, as if trained with this seed, saved as `qcat train` saves it."""
    model = new_lora(base, taxonomy, LoraSpec(rank=4, alpha=8))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name or "label_head" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    manifest = AdapterManifest(
        version=f"seed{seed}",
        taxonomy=taxonomy,
        base_model=base.name,
        base_fingerprint=base.fingerprint,
        max_question_tokens=32,
    )
    return save_adapter(model, manifest, directory)


def merged(base: LoadedModel, directory: Path) -> dict[str, torch.Tensor]:
    load_adapter(base, directory)
    return {name: tensor.detach().clone() for name, tensor in base.lm.state_dict().items()}


def test_soup_applies_the_mean_of_the_updates_and_heads(fresh_tiny: Callable[[], LoadedModel], tmp_path: Path) -> None:
    """Loaded and merged, the soup equals the average of the merged ingredients, weight by weight and in logits."""
    ingredients = [random_adapter(fresh_tiny(), tmp_path / f"a{seed}", seed) for seed in (1, 2, 3)]
    expected = {}
    states = [merged(fresh_tiny(), directory) for directory in ingredients]
    for name in states[0]:
        expected[name] = torch.stack([state[name].float() for state in states]).mean(dim=0)

    held_out = load_examples(write_learnable(tmp_path / "held-out.jsonl"))
    metrics = make_soup(ingredients, held_out, tmp_path / "soup", SETTINGS)
    soup = fresh_tiny()
    load_adapter(soup, tmp_path / "soup")
    for name, tensor in soup.lm.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(expected["label_head.weight"], states[0]["label_head.weight"])  # the mean is no ingredient

    ids, last = torch.tensor([[5, 9, 17, 4]]), torch.tensor([3])
    reference = fresh_tiny()
    attach_label_head(reference, TAXONOMY)
    reference.lm.load_state_dict(expected)
    torch.testing.assert_close(label_logits(soup.lm, ids, last), label_logits(reference.lm, ids, last))

    manifest = read_manifest(tmp_path / "soup")
    assert manifest.ingredients == ["seed1", "seed2", "seed3"]
    assert manifest.metrics["accuracy"] == metrics["accuracy"]
    assert manifest.eval_fingerprint
    assert (tmp_path / "soup" / "report" / "report.md").is_file()
    config = json.loads((tmp_path / "soup" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (12, 24)
    engine = load_engine(SETTINGS.model_copy(update={"adapter": tmp_path / "soup"}))
    assert engine.temperature == manifest.temperature


def test_mismatched_adapters_are_refused(fresh_tiny: Callable[[], LoadedModel], tmp_path: Path) -> None:
    """Other labels, another LoRA rank, missing weights or a single adapter: refused, and nothing is written."""
    one = random_adapter(fresh_tiny(), tmp_path / "one", 1)
    other_labels = random_adapter(fresh_tiny(), tmp_path / "labels", 2, Taxonomy.from_names(["A", "B", "C"]))
    base = fresh_tiny()
    manifest = read_manifest(one).model_copy(update={"version": "r2"})
    other_rank = save_adapter(new_lora(base, TAXONOMY, LoraSpec(rank=2, alpha=4)), manifest, tmp_path / "rank")
    with pytest.raises(AdapterError, match="taxonomy"):
        soup_weights([one, other_labels])
    with pytest.raises(AdapterError, match="LoRA r"):
        soup_weights([one, other_rank])
    with pytest.raises(AdapterError, match="at least two"):
        soup_weights([one])
    (other_rank / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match="not a complete qcat adapter"):
        soup_weights([one, other_rank])
    data = load_examples(write_learnable(tmp_path / "held-out.jsonl"))
    with pytest.raises(AdapterError, match="taxonomy"):
        make_soup([one, other_labels], data, tmp_path / "soup", SETTINGS)
    assert not (tmp_path / "soup").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".soup")] == []


def test_soup_command(fresh_tiny: Callable[[], LoadedModel], tmp_path: Path) -> None:
    """`qcat soup A B --out C --eval DATA` writes the averaged adapter; a clash with an existing one is an error."""
    ingredients = [random_adapter(fresh_tiny(), tmp_path / f"a{seed}", seed) for seed in (1, 2)]
    data = write_learnable(tmp_path / "held-out.jsonl")
    tiny = ("--base-model", "tiny-qwen3", "--device", "cpu")
    result = qcat("soup", *ingredients, "--out", tmp_path / "soup", "--eval", data, *tiny)
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "soup").ingredients == ["seed1", "seed2"]
    again = qcat("soup", *ingredients, "--out", tmp_path / "soup", "--eval", data, *tiny)
    assert again.exit_code == 4
    assert "already exists" in again.output
