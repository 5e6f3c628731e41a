"""Publishing a micro-batch's outputs: one Kafka record batch per (topic, partition), all in flight at once.

Sending record by record costs two producer calls' worth of Python per event (the worker's largest cost with a fast
model); appending to a record batch costs a few microseconds. Partitions are chosen exactly as Kafka's default
partitioner does (murmur2 of the key), so an `event_id` lands where any other producer would put it.

Failures come in two kinds. Transient ones (the broker unreachable, a leader moving, a request timing out) are
retried with backoff for as long as they last: the outputs are owed, and the inputs' offsets wait for them. A record
the broker refuses for good (too large, a topic's schema or policy, no authorization) would be refused forever and
stall every partition behind it, so it is found (a refused record batch is resent record by record), replaced by
its input's dead letter, and, if the broker refuses that too, written to local disk (`worker.refused`). A publish
that stays unfinished is visible: `stalled_for()` feeds readiness and a gauge.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import BrokerNotAvailableError, BrokerResponseError, ReplicaNotAvailableError

from qcat.errors import PublishAbortedError
from qcat.schemas.events import DeadLetterReason
from qcat.worker.decode import Rejected
from qcat.worker.metrics import WorkerMetrics
from qcat.worker.process import Output, dead_letter_output
from qcat.worker.refused import RefusedRecords

log = structlog.get_logger(__name__)
MAX_BACKOFF = 10.0
STOP_TIMEOUT = 5.0
"""Seconds the producer may take to stop: past them, what it still holds is abandoned (the inputs are redelivered)."""
_M, _MASK = 0x5BD1E995, 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (as `aiokafka.partitioner.murmur2`, which a unit test compares it with), reading 4-byte words
    with `struct`: faster, and the publisher hashes every event's key."""
    words = len(data) // 4
    h = 0x9747B28C ^ len(data)
    for word in struct.unpack_from(f"<{words}I", data):
        k = (word * _M) & _MASK
        h = ((h * _M) & _MASK) ^ (((k ^ (k >> 24)) * _M) & _MASK)
    if tail := data[4 * words :]:
        h = ((h ^ int.from_bytes(tail, "little")) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


def refused_for_good(error: BaseException) -> bool:
    """The broker answered and would answer the same again: the record, its topic's rules or our rights. aiokafka
    retries the retriable answers itself until the request times out; these two mean a broker is restarting."""
    transient = isinstance(error, BrokerNotAvailableError | ReplicaNotAvailableError)
    return isinstance(error, BrokerResponseError) and not error.retriable and not transient


class BatchPublisher:
    def __init__(
        self,
        client_options: dict[str, Any],
        metrics: WorkerMetrics,
        *,
        dlq: str,
        refused: RefusedRecords,
        stall_timeout: float,
    ) -> None:
        self._options = client_options
        self._producer: AIOKafkaProducer | None = None
        self._metrics = metrics
        self._partitions: dict[str, list[int]] = {}
        self._dlq, self._refused, self._stall_timeout = dlq, refused, stall_timeout
        self._closing = False
        self._started_at: dict[int, float] = {}
        self._tickets = itertools.count()
        metrics.publish_stalled_seconds.set_function(self.stalled_for)

    def stalled_for(self) -> float:
        """Seconds the oldest unfinished publish has been waiting (0 when none is)."""
        oldest = min(self._started_at.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

    def stalled(self) -> bool:
        return self.stalled_for() > self._stall_timeout

    async def _started(self) -> AIOKafkaProducer:
        """Created on first use: aiokafka binds to the running event loop, which Faust starts later."""
        if self._producer is None:
            producer = AIOKafkaProducer(**self._options, acks="all", linger_ms=0)
            await producer.start()
            self._producer = producer
        return self._producer

    def close(self) -> None:
        """Stop retrying: unfinished publishes end with `PublishAbortedError` at their next attempt."""
        self._closing = True

    async def stop(self) -> None:
        self.close()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await producer.stop()
            except TimeoutError:
                log.warning("the producer did not stop in time; unacknowledged outputs are redelivered on restart")

    async def _partitions_of(self, producer: AIOKafkaProducer, topic: str) -> list[int]:
        if topic not in self._partitions:
            self._partitions[topic] = sorted(await producer.partitions_for(topic))
        return self._partitions[topic]

    async def publish(self, outputs: Sequence[Output]) -> None:
        """Return once every output is acknowledged, or refused for good and accounted for (see the module)."""
        ticket = next(self._tickets)
        self._started_at[ticket] = time.monotonic()
        alarm = asyncio.get_running_loop().call_later(self._stall_timeout, self._log_stall, len(outputs))
        try:
            # the categorized records, dead letters and shadow records first; each event's route (or review) record
            # only once its categorized record is in: a route consumer never acts on an event whose categorized
            # record the broker refused (then the input is dead-lettered and it has no route record at all)
            replaced: set[int] = set()
            await self._publish([o for o in outputs if not o.follows], replaced)
            follow = [o for o in outputs if o.follows and (o.origin is None or id(o.origin) not in replaced)]
            if follow:
                await self._publish(follow, replaced)
        finally:
            alarm.cancel()
            del self._started_at[ticket]

    def _log_stall(self, outputs: int) -> None:
        log.error("publishing stalled; readiness fails until it recovers", seconds=self._stall_timeout, outputs=outputs)

    async def _publish(self, pending: list[Output], replaced: set[int]) -> None:
        """`replaced`: the inputs already dead-lettered in this publish (an event has two outputs); added to."""
        producer = await self._started()
        alone: list[Output] = []  # refused in a record batch: resent one per batch to find the refused record
        backoff = 0.2
        while pending or alone:
            if self._closing:
                unpublished = len(pending) + len(alone)
                raise PublishAbortedError(f"{unpublished} outputs unpublished at shutdown")
            failures = await self._send(producer, pending, together=True)
            failures += await self._send(producer, alone, together=False)
            pending, alone = [], []
            for output, error, together in failures:
                if not refused_for_good(error):
                    pending.append(output)
                elif together:
                    alone.append(output)
                else:
                    alone += self._instead(output, error, replaced)
            if pending:
                log.warning("publish failed; retrying", failed=len(pending), backoff_s=backoff)
                self._metrics.publish_retries.inc()
                self._partitions.clear()  # partitions may have changed; look them up again
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, MAX_BACKOFF)

    def _instead(self, output: Output, error: BaseException, replaced: set[int]) -> list[Output]:
        """What to send in place of a record the broker refused for good: its input's dead letter, or nothing once
        the record is written to disk (it was a dead letter itself, or its input is already dead-lettered)."""
        why = f"{output.topic} refused the record: {type(error).__name__}: {error}"
        origin = output.origin
        if origin is not None and output.topic != self._dlq:
            self._metrics.refused_records.labels(output.topic, "dead_lettered").inc()
            log.error("output refused by the broker; its input is dead-lettered", topic=output.topic, error=why)
            if id(origin) in replaced:
                return []
            replaced.add(id(origin))
            _, letter = dead_letter_output(origin, Rejected(DeadLetterReason.UNPUBLISHABLE, why), self._dlq)
            self._metrics.dead_letters.labels(DeadLetterReason.UNPUBLISHABLE.value).inc()
            return [letter]
        self._refused.write(output, why)
        self._metrics.refused_records.labels(output.topic, "written_to_disk").inc()
        log.error("record refused by the broker; written to disk", topic=output.topic, file=str(self._refused.path))
        return []

    async def _send(
        self, producer: AIOKafkaProducer, outputs: list[Output], *, together: bool
    ) -> list[tuple[Output, BaseException, bool]]:
        """Send `outputs`, grouped into record batches per (topic, partition) or one record per batch; return each
        failed output with its error and whether it shared its record batch with others."""
        if not outputs:
            return []
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
                fits = (together or not members) and batch.append(
                    key=item.key, value=item.value, timestamp=None, headers=item.headers
                ) is not None  # alone: every record starts a batch of its own
                if not fits:
                    sent.append((members, await producer.send_batch(batch, topic, partition=partition)))
                    batch, members = producer.create_batch(), list[Output]()
                    batch.append(key=item.key, value=item.value, timestamp=None, headers=item.headers)
                members.append(item)
            sent.append((members, await producer.send_batch(batch, topic, partition=partition)))
        results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        failed: list[tuple[Output, BaseException, bool]] = []
        for (members, _), outcome in zip(sent, results, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("batch send failed", error=f"{type(outcome).__name__}: {outcome}", records=len(members))
                failed += [(member, outcome, len(members) > 1) for member in members]
            elif members:  # one (topic, partition) group: count it once, not per record
                self._metrics.events_out.labels(members[0].topic).inc(len(members))
        return failed
