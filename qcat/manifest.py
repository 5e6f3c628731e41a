"""An adapter's manifest, `qcat-manifest.json`: what it was trained on (base model, labels, prompt format) and how
well it did. Torch-free: the registry, the CLI and the worker read manifests without loading a model.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qcat import __version__
from qcat.errors import AdapterError
from qcat.routing import RoutingPolicy
from qcat.schemas.events import VERSION_PATTERN
from qcat.schemas.prompt import PROMPT_FORMAT_VERSION, TRAINED_PROMPT_STYLE, PromptStyle
from qcat.schemas.taxonomy import Taxonomy

if TYPE_CHECKING:
    from qcat.settings import EngineSettings

MANIFEST = "qcat-manifest.json"
CARD = "README.md"
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
ADAPTER_FORMAT_VERSION = 1
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 1e3
"""The temperatures a manifest may hold: calibration searches 0.1 to 10; a subnormal one turns logits into NaN."""


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
    prompt_style: PromptStyle = TRAINED_PROMPT_STYLE
    max_question_tokens: int = Field(ge=1)
    temperature: float = Field(
        default=1.0,
        ge=MIN_TEMPERATURE,
        le=MAX_TEMPERATURE,
        allow_inf_nan=False,
        description="Softmax temperature fitted on held-out data.",
    )
    routing: RoutingPolicy = Field(default_factory=RoutingPolicy, description="When its answers go to review.")
    open_set: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="The SHA-256 of qcat-open-set.safetensors, the statistics of its open-set distance (None: the "
        "adapter has none, and only confidence decides review).",
    )
    metrics: dict[str, float] = Field(default_factory=dict)
    data_fingerprint: str | None = None
    eval_fingerprint: str | None = Field(default=None, description="The eval set the metrics were measured on.")
    parent_version: str | None = None
    ingredients: list[str] = Field(default_factory=list, description="The adapters a soup averages (training/soup.py).")
    created_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    qcat_version: str = __version__

    @field_validator("metrics")
    @classmethod
    def _finite_metrics(cls, metrics: dict[str, float]) -> dict[str, float]:
        """A NaN passes every comparison the gate makes and an infinity fails them all: neither is a measurement."""
        bad = sorted(key for key, value in metrics.items() if not math.isfinite(value))
        if bad:
            raise ValueError(f"metrics {bad} are not finite numbers")
        return metrics

    @model_validator(mode="after")
    def _unknown_label_is_a_label(self) -> AdapterManifest:
        label = self.routing.unknown_label
        if label is not None and label not in self.taxonomy.names:
            raise ValueError(f"routing.unknown_label {label!r} is not one of the adapter's labels")
        return self

    def write(self, directory: Path) -> None:
        """The manifest, and its model card as README.md (in place of peft's empty template)."""
        (directory / MANIFEST).write_text(self.model_dump_json(indent=2), encoding="utf-8")
        (directory / CARD).write_text(model_card(self), encoding="utf-8")


def model_card(manifest: AdapterManifest) -> str:
    """What a person wants to know before serving the adapter: what it runs on, what it says, how well, and how."""
    names = manifest.taxonomy.names
    shown = ", ".join(f"`{name}`" for name in names[:30]) + (f" and {len(names) - 30} more" if len(names) > 30 else "")
    metrics = "\n".join(f"| {key} | {value:.4f} |" for key, value in sorted(manifest.metrics.items()))
    lineage = []
    if manifest.parent_version:
        lineage.append(f"- Continued from adapter `{manifest.parent_version}`.")
    if manifest.ingredients:
        lineage.append(f"- A soup (weight average) of {', '.join(f'`{v}`' for v in manifest.ingredients)}.")
    return f"""---
library_name: peft
base_model: {json.dumps(manifest.base_model)}
pipeline_tag: text-classification
tags: [qcat, lora, question-categorization]
---

# qcat adapter `{manifest.version}`

A LoRA adapter and label head for qcat, the streaming question categorizer: it
labels each question with one of {len(names)} labels and routes it to that label's Kafka topic.

- Base model: `{manifest.base_model}` (weights fingerprint `{manifest.base_fingerprint}`); it loads on no other.
- Labels ({len(names)}): {shown}.
- Prompt: format {manifest.prompt_format_version}, style `{manifest.prompt_style}`; questions are cut to
  {manifest.max_question_tokens} tokens.
- Training data fingerprint `{manifest.data_fingerprint}`; metrics measured on eval set `{manifest.eval_fingerprint}`.
- Calibration: softmax temperature {manifest.temperature:.3f}, fitted on held-out data.
- Routing: {routing_line(manifest.routing)}
- Created {manifest.created_at:%Y-%m-%d %H:%M} UTC with qcat {manifest.qcat_version}.
{chr(10).join(lineage)}

## Held-out metrics

| metric | value |
|---|---|
{metrics}

The full report (per-label figures, confusion matrix, calibration, misclassified questions) is in `report/`.

## Serve it

```bash
qcat classify --adapter THIS_DIR "Who was Galileo ?"
QCAT_ADAPTER=THIS_DIR qcat worker
qcat adapters add THIS_DIR --registry REGISTRY && qcat adapters promote {manifest.version} --registry REGISTRY
```

Files: `adapter_model.safetensors` (the weights; qcat never loads pickles), `adapter_config.json` (peft's),
`qcat-manifest.json` (what this card is made from).
"""


def routing_line(policy: RoutingPolicy) -> str:
    target = f"{policy.target or 0:.0%}"
    chosen = {
        "precision": f"chosen for {target} precision of routed answers on held-out data",
        "unknown_recall": f"chosen to send {target} of held-out unknown questions to review",
        "coverage": f"chosen to route {target} of held-out answers",
        "fixed": "the default",
    }[policy.goal]
    expected = ", ".join(f"{key} {value:.1%}" for key, value in sorted(policy.expected.items()))
    unknown = f"; answers `{policy.unknown_label}` always go to review" if policy.unknown_label else ""
    outside = ""
    if policy.outside_distance is not None:
        why = (
            f"it keeps {policy.outside_target or 0:.0%} of held-out questions of known labels inside"
            if policy.outside_goal == "known_coverage"
            else f"it best separates held-out `{policy.unknown_label}` questions from known ones"
        )
        outside = (
            f" Questions farther than {policy.outside_distance:.2f} from every label's questions (open-set distance) "
            f"go to review first: {why}."
        )
    return (
        f"answers under confidence {policy.review_threshold:.3f} go to review ({chosen}"
        + (f"; there: {expected}" if expected else "")
        + f"){unknown}.{outside}"
    )


def read_manifest(directory: Path) -> AdapterManifest:
    path = directory / MANIFEST
    if not directory.is_dir():
        raise AdapterError(f"Adapter directory {directory} does not exist.")
    if not path.is_file():
        raise AdapterError(f"{directory} is not a qcat adapter: {MANIFEST} is missing (half-written or not ours).")
    return parse_manifest(path.read_bytes(), str(directory))


def parse_manifest(content: bytes, directory: str) -> AdapterManifest:
    """A manifest's bytes, from a local file or an object store, checked as `read_manifest` checks them."""
    try:
        manifest = AdapterManifest.model_validate_json(content)
    except ValidationError as error:
        raise AdapterError(f"{directory}/{MANIFEST} is not a valid qcat manifest: {error}") from error
    if manifest.format_version != ADAPTER_FORMAT_VERSION or manifest.prompt_format_version != PROMPT_FORMAT_VERSION:
        raise AdapterError(
            f"{directory} uses adapter format {manifest.format_version} / prompt format "
            f"{manifest.prompt_format_version}; this qcat ({__version__}) reads {ADAPTER_FORMAT_VERSION} / "
            f"{PROMPT_FORMAT_VERSION}. Retrain it with this version of qcat."
        )
    return manifest


def new_version() -> str:
    """A sortable, unique adapter version: creation time plus a random suffix."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"


Settings = TypeVar("Settings", bound="EngineSettings")


def with_adapter_base(settings: Settings, adapter: Path | None) -> Settings:
    """`settings` with `adapter`'s own base model when none was asked for (no --base-model, no QCAT_BASE_MODEL): an
    adapter loads only on the base model it was trained on, and the default hub model may not be that one."""
    if adapter is None or "base_model" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"base_model": read_manifest(adapter).base_model})
