"""Real (untrained) LoRA adapters on tiny-qwen3, saved as `qcat train` saves them, for registry and serving tests."""

from __future__ import annotations

from pathlib import Path

from qcat.lora import LoraSpec
from qcat.manifest import AdapterManifest
from qcat.pytorch.adapter import new_lora, save_adapter
from qcat.pytorch.model import LoadedModel
from qcat.schemas.taxonomy import Taxonomy


def untrained_adapter(base: LoadedModel, taxonomy: Taxonomy, version: str, directory: Path, **manifest: object) -> Path:
    """Save a fresh LoRA adapter (rank 2) on `base` with the given version and manifest fields."""
    fields = {"max_question_tokens": 32, **manifest}
    described = AdapterManifest(
        version=version, taxonomy=taxonomy, base_model=base.name, base_fingerprint=base.fingerprint, **fields
    )
    return save_adapter(new_lora(base, taxonomy, LoraSpec(rank=2, alpha=4)), described, directory)
