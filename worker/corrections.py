"""One batch of correction records: the valid ones grouped by input partition (each partition's writer file in the
store), the rest as dead letters. Pure, like `process_batch`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from schemas.events import CorrectionEvent, DeadLetter
from schemas.taxonomy import Taxonomy
from worker.decode import Rejected, dead_letter, decode_correction
from worker.process import Output, Record


@dataclass
class CorrectionBatch:
    valid: dict[int, list[CorrectionEvent]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)


def sort_corrections(
    records: Sequence[Record], *, taxonomy: Taxonomy, max_text_chars: int, dlq: str
) -> CorrectionBatch:
    batch = CorrectionBatch()
    for record in records:
        decoded = decode_correction(record.value, taxonomy=taxonomy, max_text_chars=max_text_chars)
        if isinstance(decoded, Rejected):
            letter = dead_letter(
                record.value, decoded, topic=record.topic, partition=record.partition, offset=record.offset
            )
            batch.dead_letters.append(letter)
            batch.outputs.append(Output(dlq, record.key, letter.model_dump_json().encode(), record.headers))
        else:
            batch.valid.setdefault(record.partition, []).append(decoded)
    return batch
