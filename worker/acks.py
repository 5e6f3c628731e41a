"""Publishing micro-batches in the background and acking them in the order they were taken, however their publishing
finishes.

Faust commits, per partition, the end of the first run of consecutive acked offsets, and it checks that this run
starts at the committed offset only when the hole before it is wider than one offset, and not at all while nothing
is committed yet (`faust.transport.consumer.Consumer._new_offset`). So if batch 2 were acked before batch 1, the
commit could pass batch 1's events, and a crash before batch 1 is published would lose them (the path we found
after one rebalance-test run lost 1 of 3,000 events). Acked in take order, every partition's acked offsets grow
contiguously from the committed one and that check never matters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from qcat.errors import PublishAbortedError
from qcat.worker.process import BatchResult
from qcat.worker.publisher import BatchPublisher

BATCHES_IN_FLIGHT = 4
"""Batches whose outputs may await broker acks while the next batch is classified (bounded: backpressure)."""
STOP_GRACE = 5.0
"""Seconds a stopping worker gives unfinished publishes; the rest are abandoned unacked, to be redelivered."""


@dataclass
class Turn:
    """One batch's place in the order: it may ack once `previous` has acked."""

    previous: asyncio.Future[bool] | None
    mine: asyncio.Future[bool]

    async def wait(self) -> bool:
        """True once every earlier batch is acked; False if one of them never will be (the worker is stopping):
        then this batch must not be acked either, and is redelivered."""
        if self.previous is None:
            return True
        return await asyncio.shield(self.previous)

    def finish(self, acked: bool) -> None:
        if not self.mine.done():
            self.mine.set_result(acked)


class AckOrder:
    def __init__(self) -> None:
        self._last: asyncio.Future[bool] | None = None

    def turn(self) -> Turn:
        """The next batch's turn; call in the order the batches were taken."""
        turn = Turn(self._last, asyncio.get_running_loop().create_future())
        self._last = turn.mine
        return turn


class BackgroundPublishing:
    """Each batch publishes in a task of its own while the next one is classified; its events are acked (their
    final reference released, so their offsets may commit) once it is published and every earlier batch is acked."""

    def __init__(
        self,
        publisher: BatchPublisher,
        consumer: Callable[[], Any],
        on_published: Callable[[BatchResult], None],
        crash: Callable[[BaseException], Awaitable[None]],
    ) -> None:
        self._publisher, self._consumer, self._on_published, self._crash = publisher, consumer, on_published, crash
        self._order = AckOrder()
        self._in_flight = asyncio.Semaphore(BATCHES_IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, events: list[Any], result: BatchResult) -> None:
        """Waits while `BATCHES_IN_FLIGHT` batches are publishing: backpressure on the stream."""
        await self._in_flight.acquire()
        task = asyncio.create_task(self._publish_then_ack(events, result, self._order.turn()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_then_ack(self, events: list[Any], result: BatchResult, turn: Turn) -> None:
        acked = False
        try:
            await self._publisher.publish(result.outputs)
            self._on_published(result)
            if await turn.wait():
                for event in events:  # the final reference: now the offset may be committed
                    event.message.ack(self._consumer())
                acked = True
        except PublishAbortedError:
            pass  # stopping: not acked, so redelivered
        except Exception as error:  # noqa: BLE001 - a refused record that could not even be written to disk
            await self._crash(error)  # logs it; the process exits and the inputs are redelivered after the restart
        finally:
            turn.finish(acked)
            self._in_flight.release()

    async def finish(self) -> None:
        """Within the shutdown grace period: unfinished publishes stop retrying, get `STOP_GRACE` seconds, and are
        then cancelled unacked; the producer gets `worker.publisher.STOP_TIMEOUT` more."""
        self._publisher.close()
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=STOP_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._publisher.stop()
