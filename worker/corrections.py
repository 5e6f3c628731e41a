"""One batch of correction records: the valid ones stored (each input partition has its writer file in the store),
the rest, and corrections that reuse a stored `correction_id` for another event or label, as dead letters. Pure but
for the store, like `process_batch`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from qcat.corrections import CorrectionStore
from qcat.schemas.events import CorrectionEvent, DeadLetterReason
from qcat.schemas.taxonomy import Taxonomy
from qcat.worker.decode import Rejected, decode_correction
from qcat.worker.process import BatchResult, Record, add_dead_letter


@dataclass
class CorrectionBatch(BatchResult):
    valid: dict[int, list[tuple[Record, CorrectionEvent]]] = field(default_factory=dict)
    stored: dict[int, int] = field(default_factory=dict)
    """New corrections stored, by input partition."""


def sort_corrections(
    records: Sequence[Record], *, taxonomy: Taxonomy, max_text_chars: int, dlq: str
) -> CorrectionBatch:
    batch = CorrectionBatch()
    for record in records:
        decoded = record.rejected() or decode_correction(record.value, taxonomy=taxonomy, max_text_chars=max_text_chars)
        if isinstance(decoded, Rejected):
            add_dead_letter(batch, dlq, record, decoded)
        else:
            batch.valid.setdefault(record.partition, []).append((record, decoded))
    return batch


def store_batch(batch: CorrectionBatch, store: CorrectionStore, *, writer_prefix: str, dlq: str) -> None:
    """Append each partition's valid corrections to its writer file; dead-letter the conflicts."""
    for partition, items in batch.valid.items():
        stored, conflicts = store.append([event for _, event in items], writer=f"{writer_prefix}-{partition}")
        batch.stored[partition] = stored
        records = {id(event): record for record, event in items}
        for event in conflicts:
            why = f"correction_id {event.correction_id!r} is already stored for another event or label"
            add_dead_letter(batch, dlq, records[id(event)], Rejected(DeadLetterReason.CONFLICTING_CORRECTION, why))
