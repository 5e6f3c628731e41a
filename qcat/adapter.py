"""Adapter directories: peft LoRA weights (safetensors only) plus `qcat-manifest.json`, checked before loading.

An adapter is only meaningful on the base model, taxonomy and prompt format it was trained with; the manifest
records all three and `load_adapter` refuses any mismatch with a message that says which one.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from peft import LoraConfig, PeftModel, get_peft_model
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from qcat import __version__
from qcat.errors import AdapterError
from qcat.model import HEAD, LoadedModel, attach_label_head
from qcat.schemas.events import VERSION_PATTERN
from qcat.schemas.prompt import PROMPT_FORMAT_VERSION, PromptStyle
from qcat.schemas.taxonomy import Taxonomy

MANIFEST = "qcat-manifest.json"
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
ADAPTER_FORMAT_VERSION = 1


class AdapterManifest(BaseModel):
    """What an adapter was trained on and how well it did."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal["qcat-adapter"] = "qcat-adapter"
    format_version: int = ADAPTER_FORMAT_VERSION
    version: str = Field(pattern=VERSION_PATTERN)
    taxonomy: Taxonomy
    base_model: str
    base_fingerprint: str
    prompt_format_version: int = PROMPT_FORMAT_VERSION
    prompt_style: PromptStyle = "compact"
    max_question_tokens: int = Field(ge=1)
    temperature: float = Field(default=1.0, gt=0.0, description="Softmax temperature fitted on held-out data.")
    metrics: dict[str, float] = Field(default_factory=dict)
    data_fingerprint: str | None = None
    eval_fingerprint: str | None = Field(default=None, description="The eval set the metrics were measured on.")
    parent_version: str | None = None
    ingredients: list[str] = Field(default_factory=list, description="The adapters a soup averages (training/soup.py).")
    created_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    qcat_version: str = __version__

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(self.model_dump_json(indent=2), encoding="utf-8")


def read_manifest(directory: Path) -> AdapterManifest:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise AdapterError(f"Adapter directory {directory} does not exist.", path=directory)
    if not path.is_file():
        raise AdapterError(
            f"{directory} is not a qcat adapter: {MANIFEST} is missing (half-written or not ours).", path=directory
        )
    return parse_manifest(path.read_bytes(), str(directory))


def parse_manifest(content: bytes, directory: str) -> AdapterManifest:
    """A manifest's bytes, from a local file or an object store, checked as `read_manifest` checks them."""
    try:
        manifest = AdapterManifest.model_validate_json(content)
    except ValidationError as error:
        raise AdapterError(f"{directory}/{MANIFEST} is not a valid qcat manifest: {error}", path=directory) from error
    if manifest.format_version != ADAPTER_FORMAT_VERSION or manifest.prompt_format_version != PROMPT_FORMAT_VERSION:
        raise AdapterError(
            f"{directory} uses adapter format {manifest.format_version} / prompt format "
            f"{manifest.prompt_format_version}; this qcat ({__version__}) reads {ADAPTER_FORMAT_VERSION} / "
            f"{PROMPT_FORMAT_VERSION}. Retrain it with this version of qcat."
        )
    return manifest


def check_compatible(manifest: AdapterManifest, base: LoadedModel, taxonomy: Taxonomy | None) -> None:
    if manifest.base_fingerprint != base.fingerprint:
        raise AdapterError(
            f"Adapter {manifest.version} was trained on base model {manifest.base_model!r} "
            f"(fingerprint {manifest.base_fingerprint}), but the loaded base model {base.name!r} has fingerprint "
            f"{base.fingerprint}. Load it with --base-model {manifest.base_model}."
        )
    if taxonomy is not None and taxonomy.names != manifest.taxonomy.names:
        raise AdapterError(
            f"Adapter {manifest.version} predicts labels {list(manifest.taxonomy.names)}, not the configured "
            f"taxonomy {list(taxonomy.names)}. Retrain on the new taxonomy or drop the taxonomy setting."
        )


def load_adapter(base: LoadedModel, directory: Path, taxonomy: Taxonomy | None = None) -> AdapterManifest:
    """Apply the adapter in `directory` to `base.lm` in place, merged into the weights for serving."""
    peft_model, manifest = _open_adapter(base, directory, taxonomy, trainable=False)
    try:
        base.lm = peft_model.merge_and_unload()
    except Exception as error:
        raise AdapterError(f"Could not load adapter weights from {directory}: {error}", path=directory) from error
    if not hasattr(base.lm, HEAD):
        raise AdapterError(f"Adapter {directory} did not restore the label head.", path=directory)
    return manifest


def _open_adapter(
    base: LoadedModel, directory: Path, taxonomy: Taxonomy | None, *, trainable: bool
) -> tuple[PeftModel, AdapterManifest]:
    """Check the adapter in `directory` (manifest, compatibility, safetensors weights), then wrap `base.lm` in it."""
    manifest = read_manifest(directory)
    check_compatible(manifest, base, taxonomy)
    if not (directory / WEIGHTS).is_file():
        pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
        hint = f" (found {pickles}: pickle files are never loaded; re-save with safetensors)" if pickles else ""
        raise AdapterError(f"{directory} has no {WEIGHTS}{hint}.", path=directory)
    attach_label_head(base, manifest.taxonomy)
    try:
        return PeftModel.from_pretrained(base.lm, str(directory), is_trainable=trainable), manifest
    except Exception as error:
        raise AdapterError(f"Could not load adapter weights from {directory}: {error}", path=directory) from error


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Every linear layer of a Qwen decoder block: the usual LoRA choice for classification quality."""


def new_lora(
    base: LoadedModel,
    taxonomy: Taxonomy,
    *,
    rank: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    targets: tuple[str, ...] = LORA_TARGETS,
) -> PeftModel:
    """A trainable LoRA over `base.lm` with the zero-shot head as the starting point; peft saves the head too."""
    layers = {name.rsplit(".", 1)[-1] for name, module in base.lm.named_modules() if isinstance(module, nn.Linear)}
    layers -= {HEAD, "lm_head"}
    unknown = sorted(set(targets) - layers)
    if not targets or unknown:  # peft ignores a name that matches nothing, as long as another one matches
        raise AdapterError(
            f"LoRA target modules {unknown or '(none)'} are not linear layers of {base.name}; "
            f"its linear layers are {sorted(layers)}"
        )
    attach_label_head(base, taxonomy)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), modules_to_save=[HEAD]
    )
    return get_peft_model(base.lm, config)


def continue_lora(base: LoadedModel, directory: Path, taxonomy: Taxonomy) -> tuple[PeftModel, AdapterManifest]:
    """A trainable copy of the adapter in `directory` (its LoRA weights and head) to train further: warm starts."""
    return _open_adapter(base, directory, taxonomy, trainable=True)


def new_version() -> str:
    """A sortable, unique adapter version: creation time plus a random suffix."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


def ensure_new(directory: Path) -> Path:
    """`directory`, resolved, if nothing is there yet: adapters are never overwritten. Commands that train first
    check this before they start, not only when they save."""
    directory = directory.resolve()
    if directory.exists():
        raise AdapterError(f"{directory} already exists; adapters are immutable, pick a new directory.", path=directory)
    return directory


@contextmanager
def staged_adapter(directory: Path) -> Iterator[Path]:
    """A temporary sibling of `directory` to write an adapter into, renamed to `directory` when the block completes
    (and removed if it fails): never a half-written adapter, never one overwritten."""
    directory = ensure_new(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=f".{directory.name}.") as staging:
        staged = Path(staging) / "adapter"
        staged.mkdir()
        yield staged
        staged.rename(directory)


def save_adapter(model: PeftModel, manifest: AdapterManifest, directory: Path) -> Path:
    """Write weights (safetensors) and manifest through `staged_adapter`."""
    with staged_adapter(directory) as staged:
        model.save_pretrained(str(staged), safe_serialization=True)
        manifest.write(staged)
    return directory.resolve()
