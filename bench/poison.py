"""Reliability scenarios with records Kafka delivers but aiokafka cannot parse: a header key that is not UTF-8 (Go's
Sarama and librdkafka write byte-string keys), sent by a real producer to the incoming, corrections and control
topics. Part of `python bench/reliability.py`; CI runs it through tests/integration/test_reliability.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

from bench.refusals import metric, readiness
from qcat.worker.broker import EmbeddedBroker
from tests.integration.kafka import WorkerProcess, consume, produce, question, unique

Row = tuple[bytes | None, bytes | None, list[tuple[str, bytes | None]]]


class RawKey(str):
    """A header key whose bytes on the wire are not UTF-8: aiokafka's Python batch builder writes `key.encode()`."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe" + super().encode(encoding, errors)


async def _send_batch(address: str, topic: str, partition: int, rows: list[Row]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=address)
    await producer.start()
    try:
        batch = producer.create_batch()
        # aiokafka's compiled builder accepts only exact str keys; its Python one writes whatever encode() returns
        batch._builder = _DefaultRecordBatchBuilderPy(
            2, 0, is_transactional=0, producer_id=-1, producer_epoch=-1, base_sequence=0, batch_size=1 << 20
        )
        for key, value, headers in rows:
            assert batch.append(key=key, value=value, timestamp=None, headers=headers) is not None
        await (await producer.send_batch(batch, topic, partition=partition))
    finally:
        await producer.stop()


def send_batch(address: str, topic: str, partition: int, rows: list[Row]) -> None:
    """One record batch of `rows` to `topic`:`partition`, through a real producer, acknowledged by the broker."""
    asyncio.run(_send_batch(address, topic, partition, rows))


def poison_header(tmp: Path, *, events: int) -> dict[str, Any]:
    """Two workers in one group. Partition 0 gets one record batch of [good, poison, good-with-a-null-header-value];
    the corrections and control topics get a poison record each; `events` good questions follow on both partitions.
    Wanted: the poison records dead-lettered (reason `unparseable_record`, raw bytes kept) or, on the control topic,
    skipped and counted; every good event categorized; both workers alive and ready."""
    prefix = unique("r-poison")
    poison_header = [(RawKey("trace"), b"abc")]
    with EmbeddedBroker() as broker:
        group = [WorkerProcess(broker.address, prefix, tmp, max_batch=64).start() for _ in range(2)]
        try:
            send_batch(broker.address, f"{prefix}.incoming", 0, [
                (b"before", question("before", "What is a poison ?"), []),
                (b"poisoned", question("poisoned", "Who sent this ?"), poison_header),
                (b"null-header", question("null-header", "Is a null header fine ?"), [("trace", None)]),
            ])  # fmt: skip
            correction = {"correction_id": "c1", "event_id": "e1", "text": "q", "label": "HUM", "source": "test"}
            send_batch(
                broker.address, f"{prefix}.corrections", 0, [(b"c1", json.dumps(correction).encode(), poison_header)]
            )
            send_batch(broker.address, f"{prefix}.adapters", 0, [(None, b"{}", poison_header)])
            ids = [f"p{i}" for i in range(events)]
            produce(
                broker.address, f"{prefix}.incoming", [(i.encode(), question(i, f"Where is {i} ?"), []) for i in ids]
            )
            wanted = {"before", "null-header", *ids}
            topics = [f"{prefix}.categorized", f"{prefix}.dlq"]

            def done(collected: Any) -> bool:
                categorized = {e["event_id"] for e in collected.values(topics[0])}
                return categorized >= wanted and len(collected.values(topics[1])) >= 2

            got = consume(broker.address, topics, done, timeout=120)
            letters = got.values(topics[1])
            alive = [process.process is not None and process.process.poll() is None for process in group]
            live = [process for process, up in zip(group, alive, strict=True) if up]
            invalid = sum(metric(process, 'qcat_adapter_swaps_total{result="invalid"}') for process in live)
            ready = [readiness(process)[0] for process in live]
        finally:
            for process in group:
                process.stop()
    categorized = {e["event_id"] for e in got.values(topics[0])}
    return {
        "events": len(wanted),
        "lost": len(wanted - categorized),
        "poison_dead_lettered": sorted(
            f"{letter['topic'].removeprefix(prefix + '.')}:{letter['reason']}" for letter in letters
        ),
        "poison_payloads_base64": all(letter["payload_encoding"] == "base64" for letter in letters),
        "poison_categorized": "poisoned" in categorized,
        "announcements_skipped": invalid,
        "workers_alive": alive,
        "ready_status": ready,
    }
