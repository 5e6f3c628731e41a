"""Event contracts on the wire: what producers send, what routers read, what reviewers correct.

Every event carries `schema_version`; a consumer refuses versions it does not know instead of guessing.
Models are strict (no silent type coercion) and forbid unknown fields, so a malformed producer is caught
at the edge and its message goes to the dead-letter topic with the validation error as its reason.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from qcat.schemas.taxonomy import MAX_LABEL_CHARS, Taxonomy

SCHEMA_VERSION: Literal[1] = 1
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
"""Adapter versions are names, never paths: each becomes one folder of the registry (`qcat.registry`)."""
MAX_TEXT_CHARS = 10_000
"""Questions longer than this are refused at the edge (dead letter `text_too_long`), before tokenization."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    schema_version: Literal[1] = SCHEMA_VERSION


class QuestionEvent(_Event):
    """A question to categorize. `event_id` is the idempotency key: outputs reuse it."""

    event_id: str = Field(min_length=1, max_length=128)
    text: str = Field(max_length=MAX_TEXT_CHARS)
    metadata: dict[str, str] = Field(default_factory=dict)
    created_at: AwareDatetime = Field(default_factory=utcnow)


class LabelScore(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    label: str
    score: float = Field(ge=0.0, le=1.0)


class CategorizedEvent(_Event):
    """The worker's answer for one question, published to the categorized topic and to its route."""

    event_id: str
    text: str
    label: str
    confidence: float = Field(ge=0.0, le=1.0)
    scores: tuple[LabelScore, ...] = Field(description="The top labels, best first.")
    truncated: bool = Field(description="The question was cut to the model's token budget.")
    adapter_version: str | None = Field(description="None when the base model ran zero-shot.")
    base_model: str
    latency_ms: float = Field(ge=0.0, description="From the question's created_at to categorization.")
    categorized_at: AwareDatetime = Field(default_factory=utcnow)
    metadata: dict[str, str] = Field(default_factory=dict)
    routed: bool = Field(
        default=True, description="Published to its label's route; false: to the review topic (`review_reason`)."
    )
    review_reason: Literal["outside", "none_of_these", "low_confidence"] | None = Field(
        default=None,
        description="Why it went to review: its question lies outside the taxonomy (farther from every label's "
        "questions than the adapter's boundary), its label is the adapter's 'none of these' label, or its confidence "
        "is under the review threshold. None when routed.",
    )
    distance: float | None = Field(
        default=None, ge=0.0, description="The question's open-set distance (adapters with open-set statistics)."
    )


class CorrectionEvent(_Event):
    """A human's or a router's verdict on a categorization; the next training run learns from it."""

    correction_id: str = Field(min_length=1, max_length=128)
    event_id: str = Field(min_length=1, max_length=128)
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    predicted_label: str | None = Field(default=None, max_length=MAX_LABEL_CHARS)
    label: str = Field(min_length=1, max_length=MAX_LABEL_CHARS)
    source: str = Field(min_length=1, max_length=128, description="Who corrected it: a router, a reviewer.")
    adapter_version: str | None = Field(
        default=None, max_length=128, description="The adapter that made the corrected prediction."
    )
    corrected_at: AwareDatetime = Field(
        default_factory=utcnow, description="When it was corrected; the latest correction of an event wins."
    )


class AdapterAnnouncement(_Event):
    """On the control topic: the registry's current adapter changed (`promote`, `rollback`: every worker loads it
    between batches), or a candidate is put in shadow or taken out (`shadow`, `unshadow`: workers score a share of
    events with it beside the serving adapter, without changing any route)."""

    action: Literal["promote", "rollback", "shadow", "unshadow"]
    version: str = Field(pattern=VERSION_PATTERN)
    path: str = Field(
        description="The adapter directory as the announcer sees it; workers load it from their own registry, and "
        "from this path only if configured to (QCAT_ANNOUNCED_PATHS)."
    )
    announced_at: AwareDatetime = Field(default_factory=utcnow)
    sample: float | None = Field(
        default=None, gt=0.0, le=1.0, description="With `shadow`: the share of events the candidate scores."
    )


class ShadowAnswer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    version: str | None
    label: str
    confidence: float = Field(ge=0.0, le=1.0)
    routed: bool


class ShadowRecord(_Event):
    """On `<prefix>.shadow`, while a candidate is in shadow: each event the two adapters label differently, each
    correction scored by both (`corrected_label` is the truth), and per batch a tally of events scored and agreed on.
    Nothing here changes a route; `qcat adapters compare` reads it."""

    kind: Literal["disagreement", "correction", "tally"]
    candidate_version: str
    serving_version: str | None
    event_id: str | None = None
    text: str | None = None
    serving: ShadowAnswer | None = None
    candidate: ShadowAnswer | None = None
    corrected_label: str | None = None
    scored: int = Field(default=0, ge=0)
    agreed: int = Field(default=0, ge=0)
    at: AwareDatetime = Field(default_factory=utcnow)


class DeadLetterReason(StrEnum):
    """Why a message could not be categorized; a closed set so dashboards can count by reason."""

    UNDECODABLE = "undecodable"
    UNPARSEABLE_RECORD = "unparseable_record"  # the Kafka record itself: its payload is the record's raw bytes
    INVALID_JSON = "invalid_json"
    SCHEMA_VIOLATION = "schema_violation"
    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    INFERENCE_ERROR = "inference_error"
    UNKNOWN_LABEL = "unknown_label"
    UNPUBLISHABLE = "unpublishable"  # the broker refused its output: too large, a topic's policy, not authorized
    CONFLICTING_CORRECTION = "conflicting_correction"  # a correction_id already stored with other content


class DeadLetter(_Event):
    """A message qcat could not handle, kept whole with where it came from, so nothing is lost."""

    reason: DeadLetterReason
    error: str = Field(max_length=4000)
    payload: str = Field(
        description="The original message value: UTF-8 text, or base64 if it was not UTF-8; for "
        "`unparseable_record`, the record's raw bytes as stored (Kafka's record format), base64."
    )
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"
    payload_truncated: bool = Field(
        default=False, description="The payload was cut to fit a Kafka message; the original stays at topic/offset."
    )
    headers_dropped: bool = Field(
        default=False, description="The record's headers were too large to carry; the original keeps them."
    )
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    failed_at: AwareDatetime = Field(default_factory=utcnow)


CONTRACTS: dict[str, type[BaseModel]] = {
    "QuestionEvent": QuestionEvent,
    "CategorizedEvent": CategorizedEvent,
    "CorrectionEvent": CorrectionEvent,
    "DeadLetter": DeadLetter,
    "AdapterAnnouncement": AdapterAnnouncement,
    "ShadowRecord": ShadowRecord,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each contract, for consumers written in other languages."""
    models: dict[str, type[BaseModel]] = {**CONTRACTS, "Taxonomy": Taxonomy}
    return {name: model.model_json_schema(mode="serialization") for name, model in models.items()}
