"""Records that aiokafka cannot parse become records that say so, instead of ending the consumer.

aiokafka parses a fetched record batch while the consumer iterates it. A parse error there (a header key that is not
UTF-8, as Go's Sarama and librdkafka can write; lengths that disagree; a batch whose CRC or compression is broken)
escapes `getmany` and ends Faust's fetch loop; the committed offset still points at the record, so every restart of
every member of the group meets it again. `install()` replaces the record reader aiokafka's fetcher uses
(`aiokafka.consumer.fetcher.MemoryRecords`, one name): batches are still parsed by aiokafka's compiled reader, and
only when that raises is the batch read again record by record in Python, where each record that fails becomes an
`UnparseableRecord` at its own offset: no key, its raw bytes as the value, and a `Why` header with the reason. The
worker dead-letters it (`unparseable_record`, raw bytes kept); the control topic's reader skips and counts it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchPy
from aiokafka.record.legacy_records import LegacyRecordBatch
from aiokafka.record.util import decode_varint

LOG_OVERHEAD = 12
"""A batch starts with its base offset (8 bytes) and its length (4 bytes, not counting these 12)."""
MAGIC_AT = 16
LAST_OFFSET_DELTA_AT = 23
"""Where a v2 batch header keeps its magic byte and its last offset delta (Kafka's RecordBatch layout)."""
HEADER = "qcat-unparseable"


class Why(tuple[str, bytes]):
    """The one header of an `UnparseableRecord`. A tuple subclass: aiokafka and Faust pass header tuples through
    as they are, while a producer's header of the same name is a plain tuple and is not taken for this one."""


def unparseable_reason(headers: Iterable[Any] | None) -> str | None:
    """Why the record carrying `headers` could not be parsed, or None if it was parsed."""
    for header in headers or ():
        if isinstance(header, Why):
            return header[1].decode()
    return None


@dataclass(frozen=True)
class UnparseableRecord:
    """What aiokafka's fetcher reads of a record (`PartitionRecords._consumer_record`), for one it could not parse."""

    offset: int
    value: bytes
    """The record as stored (Kafka's record format), or the whole batch when no record boundary could be read."""
    reason: str
    timestamp: int = -1
    timestamp_type: int = 0
    key: None = None
    checksum: None = None
    headers: list[Why] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "headers", [Why((HEADER, self.reason[:1000].encode()))])


class GuardedBatch:
    """A record batch read by aiokafka's compiled reader, and again in Python from the first record it refuses (a
    legacy batch, magic 0 or 1, from the first record it refuses on: the rest of it is one unparseable record)."""

    def __init__(self, data: bytes, magic: int) -> None:
        self._data, self._magic = data, magic
        self._batch = DefaultRecordBatch(data) if magic >= 2 else LegacyRecordBatch(data, magic)
        self._broken: str | None = None
        self._records: Iterator[Any] | None = None

    def __getattr__(self, name: str) -> Any:  # base_offset, next_offset, is_control_batch, producer_id, ...
        return getattr(self._batch, name)

    def validate_crc(self) -> bool:
        """A mismatch makes the batch one unparseable record instead of an error that is raised on every fetch."""
        if not self._batch.validate_crc():
            self._broken = "the record batch's CRC does not match its bytes"
        return True

    def __iter__(self) -> Iterator[Any]:
        if self._records is None:
            self._records = self._read()
        return self._records

    def __next__(self) -> Any:  # aiokafka reads a control batch's marker with next(batch)
        return next(iter(self))

    def _read(self) -> Iterator[Any]:
        if self._broken is not None:
            yield UnparseableRecord(self._batch.base_offset, self._data, self._broken)
            return
        parsed = 0
        try:
            for record in self._batch:
                yield record
                parsed += 1
        except Exception as error:  # noqa: BLE001 - any parse error: the slow reader names it per record
            if self._magic < 2:
                reason = f"the legacy record batch cannot be parsed: {_describe(error)}"
                yield UnparseableRecord(self._batch.base_offset + parsed, self._data, reason)
                return
            for index, record in enumerate(read_slowly(self._data)):
                if index >= parsed:
                    yield record


def read_slowly(data: bytes) -> Iterator[Any]:
    """The batch's records, each one that cannot be parsed as an `UnparseableRecord` (aiokafka's Python reader, one
    record at a time: a record's length prefix bounds it even when its content is broken)."""
    try:
        batch = _DefaultRecordBatchPy(data)
        iter(batch)  # decompresses
    except Exception as error:  # noqa: BLE001 - header or compression: nothing in the batch can be read
        yield whole_batch(data, f"the record batch cannot be read: {_describe(error)}")
        return
    buffer = batch._buffer  # aiokafka's private state, read only here; tests/unit/test_unparseable.py pins it
    offset = batch.base_offset - 1
    for _ in range(batch._num_records):
        start = batch._pos
        try:
            record = batch._read_msg()
        except Exception as error:  # noqa: BLE001 - this record only, if its bounds can be read
            bounds = _bounds(buffer, start)
            if bounds is None:
                reason = f"the record cannot be parsed, nor its length: {_describe(error)}"
                yield UnparseableRecord(offset + 1, bytes(buffer[start:]), reason)
                return
            stop, offset = bounds[0], batch.base_offset + bounds[1]
            reason = f"the record cannot be parsed: {_describe(error)}"
            yield UnparseableRecord(offset, bytes(buffer[start:stop]), reason, batch.first_timestamp)
            batch._pos = stop
            continue
        offset = record.offset
        yield record


def _bounds(buffer: bytearray, start: int) -> tuple[int, int] | None:
    """Where the record at `start` ends, and its offset delta; None if even these cannot be read."""
    try:
        length, pos = decode_varint(buffer, start)
        stop = pos + length
        _, pos = decode_varint(buffer, pos)  # attributes
        _, pos = decode_varint(buffer, pos)  # timestamp delta
        delta, pos = decode_varint(buffer, pos)
    except (ValueError, IndexError):
        return None
    return (stop, delta) if length > 0 and stop <= len(buffer) and delta >= 0 else None


def whole_batch(data: bytes, reason: str) -> UnparseableRecord:
    return UnparseableRecord(int.from_bytes(data[:8], "big", signed=True), data, reason)


def _describe(error: Exception) -> str:
    cause = error.__cause__ if isinstance(error.__cause__, Exception) else error  # aiokafka wraps the decode error
    return f"{type(cause).__name__}: {cause}"


class BrokenBatch:
    """A batch whose header cannot be read: one unparseable record, and the fetch moves past its offsets."""

    is_control_batch = is_transactional = False
    producer_id = None

    def __init__(self, data: bytes, reason: str) -> None:
        self._record = whole_batch(data, reason)
        self.base_offset = self._record.offset
        delta = int.from_bytes(data[LAST_OFFSET_DELTA_AT : LAST_OFFSET_DELTA_AT + 4], "big", signed=True)
        self.next_offset = self.base_offset + max(delta, 0) + 1

    def validate_crc(self) -> bool:
        return True

    def __iter__(self) -> Iterator[Any]:
        return iter([self._record])


class GuardedRecords:
    """aiokafka's `MemoryRecords` (what one fetch returned for one partition), with guarded batches."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    def size_in_bytes(self) -> int:
        return len(self._data)

    def has_next(self) -> bool:
        """A whole batch is left; a partial one at the end of a fetch is fetched again whole, as aiokafka does."""
        return self._next_stop() is not None

    def _next_stop(self) -> int | None:
        data, pos = self._data, self._pos
        if len(data) - pos < LOG_OVERHEAD:
            return None
        stop = pos + LOG_OVERHEAD + int.from_bytes(data[pos + 8 : pos + LOG_OVERHEAD], "big", signed=True)
        return stop if pos + LOG_OVERHEAD <= stop <= len(data) else None

    def next_batch(self) -> Any:
        stop = self._next_stop()
        if stop is None:
            return None
        data, self._pos = self._data[self._pos : stop], stop
        magic = data[MAGIC_AT] if len(data) > MAGIC_AT else -1
        try:
            return GuardedBatch(data, magic)
        except Exception as error:  # noqa: BLE001 - a header that cannot be read
            return BrokenBatch(data, f"the record batch cannot be read: {_describe(error)}")


def install() -> None:
    """Make every aiokafka consumer of this process read records through `GuardedRecords` (idempotent)."""
    fetcher.MemoryRecords = GuardedRecords
