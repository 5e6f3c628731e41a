"""Adapter directories: peft LoRA weights (safetensors only) plus `qcat-manifest.json` (qcat/manifest.py), checked
before loading; new and continued LoRAs to train; saving without ever leaving half an adapter.

An adapter is only meaningful on the base model, taxonomy and prompt format it was trained with; the manifest
records all three and `load_adapter` refuses any mismatch with a message that says which one.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from qcat.errors import AdapterError, OutputExistsError
from qcat.lora import DEFAULT_LORA, LoraSpec
from qcat.manifest import CONFIG, WEIGHTS, AdapterManifest, read_manifest
from qcat.pytorch.model import HEAD, LoadedModel, attach_label_head
from qcat.pytorch.open_set import STATS, OpenSetHead, OpenSetStats
from qcat.schemas.taxonomy import Taxonomy


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
    """Apply the adapter in `directory` to `base.lm` in place, merged into the weights for serving; with open-set
    statistics, its head also gives each question's distance (`qcat.pytorch.open_set`)."""
    peft_model, manifest = _open_adapter(base, directory, taxonomy, trainable=False)
    try:
        base.lm = peft_model.merge_and_unload()
    except Exception as error:
        raise AdapterError(f"Could not load adapter weights from {directory}: {error}") from error
    if not hasattr(base.lm, HEAD):
        raise AdapterError(f"Adapter {directory} did not restore the label head.")
    if manifest.open_set is not None:
        if file_sha256(directory / STATS) != manifest.open_set:
            raise AdapterError(f"{directory / STATS} is missing or not the file its manifest names (SHA-256)")
        setattr(base.lm, HEAD, OpenSetHead(getattr(base.lm, HEAD), OpenSetStats.load(directory)))
    return manifest


def file_sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _open_adapter(
    base: LoadedModel, directory: Path, taxonomy: Taxonomy | None, *, trainable: bool
) -> tuple[PeftModel, AdapterManifest]:
    """Check the adapter in `directory` (manifest, compatibility, safetensors weights), then wrap `base.lm` in it."""
    manifest = read_manifest(directory)
    check_compatible(manifest, base, taxonomy)
    if not (directory / WEIGHTS).is_file():
        pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt"))
        hint = f" (found {pickles}: pickle files are never loaded; re-save with safetensors)" if pickles else ""
        raise AdapterError(f"{directory} has no {WEIGHTS}{hint}.")
    attach_label_head(base, manifest.taxonomy)
    try:
        return PeftModel.from_pretrained(base.lm, str(directory), is_trainable=trainable), manifest
    except Exception as error:
        raise AdapterError(f"Could not load adapter weights from {directory}: {error}") from error


def new_lora(base: LoadedModel, taxonomy: Taxonomy, spec: LoraSpec = DEFAULT_LORA) -> PeftModel:
    """A trainable LoRA over `base.lm` with the zero-shot head as the starting point; peft saves the head too."""
    layers = {name.rsplit(".", 1)[-1] for name, module in base.lm.named_modules() if isinstance(module, nn.Linear)}
    layers -= {HEAD, "lm_head"}
    targets = spec.targets
    unknown = sorted(set(targets) - layers)
    if not targets or unknown:  # peft ignores a name that matches nothing, as long as another one matches
        raise AdapterError(
            f"LoRA target modules {unknown or '(none)'} are not linear layers of {base.name}; "
            f"its linear layers are {sorted(layers)}"
        )
    attach_label_head(base, taxonomy)
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.scaling,
        lora_dropout=spec.dropout,
        target_modules=list(targets),
        modules_to_save=[HEAD],
    )
    return get_peft_model(base.lm, config)


def continue_lora(base: LoadedModel, directory: Path, taxonomy: Taxonomy) -> tuple[PeftModel, AdapterManifest]:
    """A trainable copy of the adapter in `directory` (its LoRA weights and head) to train further: warm starts."""
    return _open_adapter(base, directory, taxonomy, trainable=True)


def ensure_new(directory: Path) -> Path:
    """`directory`, resolved, if nothing is there yet: adapters are never overwritten. Commands that train first
    check this before they start, not only when they save."""
    directory = directory.resolve()
    if directory.exists():
        raise OutputExistsError(f"{directory} already exists; adapters are immutable, pick a new directory.")
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


def save_adapter(
    model: PeftModel, manifest: AdapterManifest, directory: Path, open_set: OpenSetStats | None = None
) -> Path:
    """Write weights (safetensors), open-set statistics if any, and the manifest (naming the statistics' SHA-256)
    through `staged_adapter`."""
    with staged_adapter(directory) as staged:
        # qcat never resizes the vocabulary: without this, peft looks the base model's config.json up on the Hub at
        # every save (a network call, and a warning for GGUF files and the built-in model)
        model.save_pretrained(str(staged), safe_serialization=True, save_embedding_layers=False)
        config = json.loads((staged / CONFIG).read_text(encoding="utf-8"))
        if not config.get("base_model_name_or_path"):  # so that Hub tools can tell the base (the built-in one too)
            config["base_model_name_or_path"] = manifest.base_model
            (staged / CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
        if open_set is not None:
            open_set.save(staged)
            manifest = manifest.model_copy(update={"open_set": file_sha256(staged / STATS)})
        manifest.write(staged)
    return directory.resolve()
