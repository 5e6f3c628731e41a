"""qcat's fetch loop waits for Faust's low-water signal instead of queuing a blocked delivery per message."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import faust
import pytest
from aiokafka import TopicPartition
from faust.types import TP

from qcat.worker import transport
from qcat.worker.transport import Consumer, use_fast_transport

TP0 = TP("questions.incoming", 0)


@contextlib.contextmanager
def consumer(fetch_max_wait: float | None = None) -> Iterator[Any]:
    """The consumer of an app that never connects (enter in a coroutine): the tests drive its flow-control marks."""
    app = faust.App(
        "t-transport",
        broker="kafka://127.0.0.1:9",
        store="memory://",
        autodiscover=False,
        loop=asyncio.get_running_loop(),  # Faust would open a loop of its own, never closed
    )
    use_fast_transport(app, fetch_max_wait)
    assert isinstance(app.consumer, Consumer)
    try:
        yield app.consumer
    finally:
        app.consumer._thread.thread_loop.close()  # the consumer thread's loop, made eagerly, never started here


def test_a_full_partition_waits_for_the_low_water_signal() -> None:
    """A partition marked full holds its next delivery until the stream has worked its buffer down."""

    async def run() -> tuple[bool, bool]:
        with consumer() as fetcher:
            fetcher._buffered_partitions.add(TP0)
            waiting = asyncio.create_task(fetcher._until_worked_down(TP0))
            await asyncio.sleep(0.05)
            held = not waiting.done()
            fetcher.on_buffer_drop(TP0)  # what Faust's queue calls at its low-water mark
            await asyncio.wait_for(waiting, 1)
            return held, TP0 in fetcher._buffered_partitions

    assert asyncio.run(run()) == (True, False)


def test_a_mark_nothing_will_clear_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full mark that outlives STALE_AFTER_S (a rebalance cleared the buffer without a signal) stops holding."""
    monkeypatch.setattr(transport, "STALE_AFTER_S", 0.05)

    async def run() -> bool:
        with consumer() as fetcher:
            fetcher._buffered_partitions.add(TP0)
            # the fetch loop's partitions are aiokafka's; Faust's bookkeeping accepts only its own
            await asyncio.wait_for(fetcher._until_worked_down(TopicPartition(TP0.topic, TP0.partition)), 1)
            assert fetcher._get_active_partitions() == {TP0}  # asserts that each is Faust's TP
            return TP0 in fetcher._buffered_partitions

    assert asyncio.run(run()) is False


@pytest.mark.parametrize(("fetch_max_wait", "expected_ms"), [(None, 1500), (0.05, 50)])
def test_the_fetch_wait_reaches_the_kafka_consumer(fetch_max_wait: float | None, expected_ms: int) -> None:
    """QCAT_FETCH_MAX_WAIT becomes aiokafka's fetch_max_wait_ms (Faust fixes 1500 ms, kept when none is given)."""

    async def run() -> int:
        with consumer(fetch_max_wait) as fetcher:
            kafka = fetcher._thread._create_worker_consumer(fetcher.transport)
            try:
                return int(kafka._fetch_max_wait_ms)
            finally:
                await kafka.stop()  # never started: closes the client it made

    assert asyncio.run(run()) == expected_ms
