"""Publishing a micro-batch's outputs: one Kafka record batch per (topic, partition), all in flight at once.

Sending record by record costs two producer calls' worth of Python per event (the worker's largest cost with a fast
model); appending to a record batch costs a few microseconds. Partitions are chosen exactly as Kafka's default
partitioner does (murmur2 of the key), so an `event_id` lands where any other producer would put it.
"""

from __future__ import annotations

import asyncio
import struct
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer

from worker.metrics import WorkerMetrics
from worker.process import Output

log = structlog.get_logger(__name__)
MAX_BACKOFF = 10.0
_M, _MASK = 0x5BD1E995, 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (as `aiokafka.partitioner.murmur2`, which a unit test compares it with), reading 4-byte words
    with `struct`: twice as fast, and the publisher hashes every event's key."""
    words = len(data) // 4
    h = 0x9747B28C ^ len(data)
    for word in struct.unpack_from(f"<{words}I", data):
        k = (word * _M) & _MASK
        h = ((h * _M) & _MASK) ^ (((k ^ (k >> 24)) * _M) & _MASK)
    if tail := data[4 * words :]:
        h = ((h ^ int.from_bytes(tail, "little")) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


class BatchPublisher:
    def __init__(self, client_options: dict[str, Any], metrics: WorkerMetrics) -> None:
        self._options = client_options
        self._producer: AIOKafkaProducer | None = None
        self._metrics = metrics
        self._partitions: dict[str, list[int]] = {}

    async def _started(self) -> AIOKafkaProducer:
        """Created on first use: aiokafka binds to the running event loop, which Faust starts later."""
        if self._producer is None:
            producer = AIOKafkaProducer(**self._options, acks="all", linger_ms=0)
            await producer.start()
            self._producer = producer
        return self._producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _partitions_of(self, producer: AIOKafkaProducer, topic: str) -> list[int]:
        if topic not in self._partitions:
            self._partitions[topic] = sorted(await producer.partitions_for(topic))
        return self._partitions[topic]

    async def publish(self, outputs: Sequence[Output]) -> None:
        """Send everything, then wait for every ack; resend what failed, with backoff, until it succeeds."""
        producer = await self._started()
        pending, backoff = list(outputs), 0.2
        while pending:
            failed = await self._send(producer, pending)
            if failed:
                log.warning("publish failed; retrying", failed=len(failed), backoff_s=backoff)
                self._metrics.publish_retries.inc()
                self._partitions.clear()  # partitions may have changed; look them up again
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, MAX_BACKOFF)
            pending = failed

    async def _send(self, producer: AIOKafkaProducer, outputs: list[Output]) -> list[Output]:
        partitions = {topic: await self._partitions_of(producer, topic) for topic in {o.topic for o in outputs}}
        groups: dict[tuple[str, int], list[Output]] = defaultdict(list)
        hashes: dict[bytes | None, int] = {}  # a batch's outputs share keys: hash each once
        for output in outputs:
            key, key_hash = output.key, hashes.get(output.key)
            if key_hash is None:
                key_hash = hashes[key] = murmur2(key) & 0x7FFFFFFF if key is not None else 0
            of_topic = partitions[output.topic]
            groups[(output.topic, of_topic[key_hash % len(of_topic)])].append(output)
        sent: list[tuple[list[Output], Any]] = []
        for (topic, partition), items in groups.items():
            batch, members = producer.create_batch(), list[Output]()
            for item in items:
                if batch.append(key=item.key, value=item.value, timestamp=None, headers=item.headers) is None:
                    sent.append((members, await producer.send_batch(batch, topic, partition=partition)))
                    batch, members = producer.create_batch(), list[Output]()
                    batch.append(key=item.key, value=item.value, timestamp=None, headers=item.headers)
                members.append(item)
            sent.append((members, await producer.send_batch(batch, topic, partition=partition)))
        results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        failed: list[Output] = []
        for (members, _), outcome in zip(sent, results, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("batch send failed", error=f"{type(outcome).__name__}: {outcome}", records=len(members))
                failed += members
            elif members:  # one (topic, partition) group: count it once, not per record
                self._metrics.events_out.labels(members[0].topic).inc(len(members))
        return failed
