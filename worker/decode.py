"""From raw Kafka bytes to a QuestionEvent or CorrectionEvent, or to the dead-letter reason why not. Pure; never
raises."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from pydantic import ValidationError

from qcat.schemas.events import CorrectionEvent, DeadLetter, DeadLetterReason, QuestionEvent
from qcat.schemas.taxonomy import Taxonomy

Event = TypeVar("Event", QuestionEvent, CorrectionEvent)
MAX_CLOCK_SKEW = timedelta(hours=1)
"""How far in the future a correction's `corrected_at` may be (clocks differ); later ones are dead-lettered."""
MAX_DEAD_LETTER_BYTES = 256 * 1024
"""A dead letter's JSON stays under this whatever its payload, far below Kafka's default 1 MiB record limit: JSON
escaping alone can make a payload six times longer (a control character becomes `\\u00XX`)."""


@dataclass(frozen=True)
class Rejected:
    reason: DeadLetterReason
    error: str


def decode_question(raw: bytes | None, *, max_text_chars: int) -> QuestionEvent | Rejected:
    return _decode(raw, QuestionEvent, max_text_chars)


def decode_correction(raw: bytes | None, *, taxonomy: Taxonomy, max_text_chars: int) -> CorrectionEvent | Rejected:
    decoded = _decode(raw, CorrectionEvent, max_text_chars)
    if not isinstance(decoded, CorrectionEvent):
        return decoded
    if decoded.label not in taxonomy.names:
        return Rejected(DeadLetterReason.UNKNOWN_LABEL, f"label {decoded.label!r} is not in the serving taxonomy")
    if decoded.corrected_at > datetime.now(UTC) + MAX_CLOCK_SKEW:  # it would outrank every later correction
        return Rejected(DeadLetterReason.SCHEMA_VIOLATION, f"corrected_at {decoded.corrected_at} is in the future")
    return decoded


def _decode(  # noqa: PLR0911 - one return per reason
    raw: bytes | None, kind: type[Event], max_text_chars: int
) -> Event | Rejected:
    if raw is None:
        return Rejected(DeadLetterReason.SCHEMA_VIOLATION, "message has no value (tombstone)")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejected(DeadLetterReason.UNDECODABLE, f"not UTF-8: {error}")
    try:
        event = kind.model_validate_json(raw)
    except ValidationError as error:
        kinds = {(e["type"], e["loc"][:1]) for e in error.errors()}
        if any(kind == "json_invalid" for kind, _ in kinds):
            return Rejected(DeadLetterReason.INVALID_JSON, _summary(error))
        if ("string_too_long", ("text",)) in kinds:
            return Rejected(DeadLetterReason.TEXT_TOO_LONG, _summary(error))
        return Rejected(DeadLetterReason.SCHEMA_VIOLATION, _summary(error))
    if not event.text.strip():
        return Rejected(DeadLetterReason.EMPTY_TEXT, "text is empty or whitespace")
    if len(event.text) > max_text_chars:
        return Rejected(
            DeadLetterReason.TEXT_TOO_LONG, f"text has {len(event.text)} characters, limit {max_text_chars}"
        )
    return event


def _summary(error: ValidationError) -> str:
    """Validation errors without the input values (they can be huge, and they are in the payload anyway)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in error.errors()[:10])


def dead_letter(
    raw: bytes | None, rejected: Rejected, *, topic: str, partition: int, offset: int, headers_dropped: bool = False
) -> DeadLetter:
    """The record's dead letter, its payload cut (and flagged) until the letter's JSON fits `MAX_DEAD_LETTER_BYTES`."""
    data = raw or b""
    try:
        payload, encoding = data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(data).decode("ascii"), "base64"
    keep = min(len(payload), MAX_DEAD_LETTER_BYTES)
    while True:
        letter = DeadLetter(
            reason=rejected.reason,
            error=rejected.error[:4000],
            payload=payload[:keep],
            payload_encoding=encoding,  # type: ignore[arg-type]
            payload_truncated=keep < len(payload),
            headers_dropped=headers_dropped,
            topic=topic,
            partition=partition,
            offset=offset,
        )
        size = len(letter.model_dump_json().encode())
        if size <= MAX_DEAD_LETTER_BYTES:
            return letter
        keep = int(keep * MAX_DEAD_LETTER_BYTES / size * 0.9)  # escaping is uneven: aim a little lower
