"""Records aiokafka cannot parse reach the consumer as unparseable records at their own offsets, through aiokafka's
own fetcher code (`PartitionRecords`), and the records around them as usual."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.structs import TopicPartition

from bench.poison import RawKey
from qcat.worker.unparseable import GuardedRecords, unparseable_reason

TP = TopicPartition("questions.incoming", 0)


def batch(rows: list[tuple[bytes, list[tuple[str, bytes | None]]]], base_offset: int = 0, codec: int = 0) -> bytes:
    builder = _DefaultRecordBatchBuilderPy(
        2, codec, is_transactional=0, producer_id=-1, producer_epoch=-1, base_sequence=-1, batch_size=1 << 20
    )
    for offset, (value, headers) in enumerate(rows):
        builder.append(offset, timestamp=None, key=b"k", value=value, headers=headers)
    data = bytearray(builder.build())
    data[:8] = base_offset.to_bytes(8, "big")  # the broker assigns offsets; the CRC does not cover them
    return bytes(data)


def consumed(data: bytes, *, check_crcs: bool = True) -> list[Any]:
    records = PartitionRecords(TP, GuardedRecords(data), [], 0, None, None, check_crcs, READ_UNCOMMITTED)
    return list(records)


def test_a_header_key_that_is_not_utf8_makes_one_unparseable_record() -> None:
    """The record with the bad key is unparseable at its offset, with its raw bytes; its neighbours (one with a null
    header value) arrive as usual, and the next fetch starts after the batch."""
    data = batch([(b"a", []), (b"b", [(RawKey("trace"), b"x")]), (b"c", [("trace", None)])], base_offset=40)
    records = PartitionRecords(TP, GuardedRecords(data), [], 40, None, None, True, READ_UNCOMMITTED)
    out = list(records)
    assert [r.offset for r in out] == [40, 41, 42]
    assert [unparseable_reason(r.headers) is None for r in out] == [True, False, True]
    assert out[0].value == b"a"
    assert out[2].value == b"c"
    assert out[2].headers == (("trace", None),)
    why = unparseable_reason(out[1].headers)
    assert why is not None
    assert "UnicodeDecodeError" in why
    assert b"\xff\xfetrace" in out[1].value
    assert b"b" in out[1].value
    assert out[1].key is None
    assert records.next_fetch_offset == 43


def test_a_header_of_the_same_name_from_a_producer_is_not_taken_for_the_mark() -> None:
    """Only the guard's own header marks a record unparseable; a producer cannot forge it."""
    [record] = consumed(batch([(b"a", [("qcat-unparseable", b"forged")])]))
    assert unparseable_reason(record.headers) is None
    assert record.value == b"a"


@pytest.mark.parametrize("codec", [0, 1])
def test_a_batch_whose_crc_fails_is_one_unparseable_record(codec: int) -> None:
    """A corrupt batch (here one flipped bit in a record) becomes one unparseable record at its base offset holding
    the whole batch, and the fetch moves past all its offsets, instead of an error raised on every fetch."""
    data = bytearray(batch([(b"a" * 500, []), (b"b", [])], base_offset=7, codec=codec))
    data[-4] ^= 1
    records = PartitionRecords(TP, GuardedRecords(bytes(data)), [], 7, None, None, True, READ_UNCOMMITTED)
    [record] = list(records)
    assert record.offset == 7
    assert record.value == bytes(data)
    assert "CRC" in (unparseable_reason(record.headers) or "")
    assert records.next_fetch_offset == 9


def test_a_batch_that_does_not_decompress_is_one_unparseable_record() -> None:
    """With CRC checks off, gzip garbage is found when the batch is read: one unparseable record, then the next
    batch."""
    broken = bytearray(batch([(b"a" * 500, []), (b"b" * 500, [])], codec=1))  # small batches are sent uncompressed
    broken[61:63] = b"\x00\x00"  # the gzip stream's magic number, after the 61-byte batch header
    following = batch([(b"c", [])], base_offset=2)
    records = PartitionRecords(
        TP, GuardedRecords(bytes(broken) + following), [], 0, None, None, False, READ_UNCOMMITTED
    )
    out = list(records)
    assert [r.offset for r in out] == [0, 2]
    assert "cannot be read" in (unparseable_reason(out[0].headers) or "")
    assert out[1].value == b"c"


def test_lengths_that_disagree_make_the_rest_of_the_batch_one_record() -> None:
    """A record whose length prefix points past the batch cannot be bounded: it and the rest of the batch are one
    unparseable record; the records before it arrive as usual."""
    data = bytearray(batch([(b"a", []), (b"b", []), (b"c", [])]))
    second = 61 + 1 + data[61] // 2  # the second record's length varint: after the first record
    data[second] = 0x7E  # 63 bytes: more than is left
    out = consumed(bytes(data), check_crcs=False)
    assert out[0].value == b"a"
    assert unparseable_reason(out[0].headers) is None
    assert len(out) == 2
    assert out[1].offset == 1
    assert unparseable_reason(out[1].headers) is not None


def test_a_partial_batch_at_the_end_of_a_fetch_waits_for_the_next_fetch() -> None:
    """As in aiokafka: the whole batches are read, the cut one is not."""
    whole = batch([(b"a", [])])
    records = GuardedRecords(whole + batch([(b"b", [])], base_offset=1)[:30])
    assert records.has_next()
    assert [r.value for r in records.next_batch()] == [b"a"]
    assert not records.has_next()
    assert records.next_batch() is None
    assert records.size_in_bytes() == len(whole) + 30


def test_the_guard_reads_good_batches_with_aiokafkas_compiled_reader() -> None:
    """Good batches keep aiokafka's fast path: the records come from its compiled reader, not the Python one."""
    [record] = consumed(batch([(b"a", [])]))
    assert type(record).__module__ == "aiokafka.structs"
    raw = GuardedRecords(batch([(b"a", [])])).next_batch()
    assert type(next(iter(raw))).__module__.startswith("aiokafka.record._crecords")
