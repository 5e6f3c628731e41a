"""One micro-batch, from raw Kafka records to the records to publish. Pure and synchronous: it runs in the
inference thread, so the event loop keeps polling and heartbeating while the model works."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from qcat.classifier import Classifier, Prediction
from qcat.errors import InferenceError
from qcat.schemas.events import SCHEMA_VERSION, DeadLetter, DeadLetterReason, QuestionEvent
from qcat.schemas.topics import Topics
from qcat.worker.decode import Rejected, dead_letter, decode_question
from qcat.worker.shadow import Shadow, shadow_records

Headers = list[tuple[str, bytes]]
TOP_SCORES = 3
MAX_DEAD_LETTER_HEADER_BYTES = 16 * 1024
"""Headers larger than this stay with the original record, not its dead letter (flagged `headers_dropped`)."""
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Record:
    """An input record as consumed."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    headers: Headers = field(default_factory=list)
    unparseable: str | None = None
    """Why the Kafka record could not be parsed (`value` then holds its raw bytes); None for a parsed record."""

    def rejected(self) -> Rejected | None:
        return None if self.unparseable is None else Rejected(DeadLetterReason.UNPARSEABLE_RECORD, self.unparseable)


@dataclass(frozen=True)
class Output:
    topic: str
    key: bytes | None
    value: bytes
    headers: Headers
    origin: Record | None = None
    """The input it answers: if the broker refuses this output, the input is dead-lettered in its place."""
    follows: bool = False
    """Published only once its input's categorized record is in (a route or review record)."""


@dataclass(frozen=True)
class Labelled:
    """What metrics and logs need of a categorized event."""

    event_id: str
    text: str
    label: str
    latency_ms: float


@dataclass
class BatchResult:
    outputs: list[Output] = field(default_factory=list)
    categorized: list[Labelled] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    inference_seconds: float = 0.0
    shadow_scored: int = 0
    shadow_agreed: int = 0


def process_batch(
    records: Sequence[Record],
    classifier: Classifier,
    topics: Topics,
    *,
    threshold: float | None,
    max_text_chars: int,
    shadow: Shadow | None = None,
) -> BatchResult:
    """Decode, classify and route `records`; `threshold`, if set, replaces the classifier's own review threshold. A
    candidate in `shadow` also labels its share of the events, for the shadow topic only (`worker.shadow`)."""
    result = BatchResult()
    valid: list[tuple[Record, QuestionEvent]] = []
    for record in records:
        decoded = record.rejected() or decode_question(record.value, max_text_chars=max_text_chars)
        if isinstance(decoded, Rejected):
            add_dead_letter(result, topics.dlq, record, decoded)
        else:
            valid.append((record, decoded))
    if not valid:
        return result
    started = time.perf_counter()
    predictions = _classify(classifier, [event.text for _, event in valid])
    result.inference_seconds = time.perf_counter() - started
    routing = classifier.routing
    answered: list[tuple[QuestionEvent, Prediction]] = []
    for (record, event), prediction in zip(valid, predictions, strict=True):
        if isinstance(prediction, Rejected):
            add_dead_letter(result, topics.dlq, record, prediction)
            continue
        now = datetime.now(UTC)
        labelled = Labelled(
            event.event_id, event.text, prediction.label, max(0.0, (now - event.created_at).total_seconds() * 1000)
        )
        reason = routing.review_reason(prediction.label, prediction.confidence, prediction.distance, threshold)
        value = categorized_json(event, prediction, labelled.latency_ms, now, classifier, reason)
        key = event.event_id.encode()
        route = topics.routes[prediction.label] if reason is None else topics.review
        result.outputs += [
            Output(topics.categorized, key, value, record.headers, record),
            Output(route, key, value, record.headers, record, follows=True),
        ]
        result.categorized.append(labelled)
        answered.append((event, prediction))
    if shadow is not None and answered:
        add_shadow(result, topics, answered, classifier, shadow, threshold)
    return result


def add_shadow(
    result: BatchResult,
    topics: Topics,
    answered: list[tuple[QuestionEvent, Prediction]],
    classifier: Classifier,
    shadow: Shadow,
    threshold: float | None,
) -> None:
    """The shadow candidate's records for this batch. A failing candidate costs its records, never the batch."""
    try:
        records = shadow_records([e for e, _ in answered], [p for _, p in answered], classifier, shadow, threshold)
    except Exception as error:  # noqa: BLE001 - the candidate is on trial; the serving answers stand
        log.warning("shadow scoring failed; the batch's routes stand", error=f"{type(error).__name__}: {error}")
        return
    for record in records:
        if record.kind == "tally":
            result.shadow_scored, result.shadow_agreed = record.scored, record.agreed
        key = (record.event_id or record.candidate_version).encode()
        result.outputs.append(Output(topics.shadow, key, record.model_dump_json().encode(), []))


def categorized_json(
    event: QuestionEvent,
    prediction: Prediction,
    latency_ms: float,
    now: datetime,
    classifier: Classifier,
    review_reason: str | None = None,
) -> bytes:
    """A CategorizedEvent's wire form, written directly: building pydantic models costs more than the rest of this
    hot path. Every field comes from a validated event or the engine; a unit test checks that the result parses
    as a strict CategorizedEvent with exactly the model's fields, so this cannot drift from the contract."""
    return json.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "event_id": event.event_id,
            "text": event.text,
            "label": prediction.label,
            "confidence": prediction.confidence,
            "scores": [{"label": label, "score": score} for label, score in prediction.top(TOP_SCORES)],
            "truncated": prediction.truncated,
            "adapter_version": classifier.adapter_version,
            "base_model": classifier.model_name,
            "latency_ms": latency_ms,
            "categorized_at": now.isoformat(),
            "metadata": event.metadata,
            "routed": review_reason is None,
            "review_reason": review_reason,
            "distance": prediction.distance,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def _classify(classifier: Classifier, texts: list[str]) -> list[Prediction | Rejected]:
    """The whole batch in one pass; if it fails, each text alone, so one poisonous input cannot sink its batch. When
    the classifier names the rows at fault (`InferenceError.bad_indices`), only those are dead-lettered and the rest
    are classified again together."""
    try:
        return [*classifier.classify(texts)]
    except InferenceError as error:
        if error.bad_indices and len(error.bad_indices) < len(texts):
            bad = set(error.bad_indices)
            rest = iter(_classify(classifier, [text for i, text in enumerate(texts) if i not in bad]))
            why = Rejected(DeadLetterReason.INFERENCE_ERROR, f"{type(error).__name__}: {error}")
            return [why if i in bad else next(rest) for i in range(len(texts))]
        log.warning("batch inference failed; retrying one by one", error=str(error), n=len(texts))
    except Exception as error:  # noqa: BLE001 - any model failure becomes per-event dead letters, never a crash
        log.warning("batch inference failed; retrying one by one", error=str(error), n=len(texts))
    results: list[Prediction | Rejected] = []
    for text in texts:
        try:
            results.extend(classifier.classify([text]))
        except Exception as error:  # noqa: BLE001 - see above
            results.append(Rejected(DeadLetterReason.INFERENCE_ERROR, f"{type(error).__name__}: {error}"))
    return results


def add_dead_letter(result: BatchResult, dlq: str, record: Record, rejected: Rejected) -> None:
    """The record's dead letter, kept for metrics and logs, and queued for the DLQ topic `dlq`."""
    letter, output = dead_letter_output(record, rejected, dlq)
    result.dead_letters.append(letter)
    result.outputs.append(output)


def dead_letter_output(record: Record, rejected: Rejected, dlq: str) -> tuple[DeadLetter, Output]:
    """A dead letter and its record for `dlq`, both bounded: the record's headers travel only if they are small."""
    keep_headers = sum(len(name) + len(value or b"") for name, value in record.headers) <= MAX_DEAD_LETTER_HEADER_BYTES
    letter = dead_letter(
        record.value,
        rejected,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        headers_dropped=not keep_headers,
    )
    headers = record.headers if keep_headers else []
    return letter, Output(dlq, record.key, letter.model_dump_json().encode(), headers)
