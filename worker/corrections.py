"""One batch of correction records: the valid ones grouped by input partition (each partition's writer file in the
store), the rest as dead letters. Pure, like `process_batch`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from schemas.events import CorrectionEvent
from schemas.taxonomy import Taxonomy
from worker.decode import Rejected, decode_correction
from worker.process import BatchResult, Record, add_dead_letter


@dataclass
class CorrectionBatch(BatchResult):
    valid: dict[int, list[CorrectionEvent]] = field(default_factory=dict)


def sort_corrections(
    records: Sequence[Record], *, taxonomy: Taxonomy, max_text_chars: int, dlq: str
) -> CorrectionBatch:
    batch = CorrectionBatch()
    for record in records:
        decoded = decode_correction(record.value, taxonomy=taxonomy, max_text_chars=max_text_chars)
        if isinstance(decoded, Rejected):
            add_dead_letter(batch, dlq, record, decoded)
        else:
            batch.valid.setdefault(record.partition, []).append(decoded)
    return batch
