"""Acking micro-batches in the order they were taken, however their publishing finishes.

Faust commits, per partition, the end of the first run of consecutive acked offsets, and it checks that this run
starts at the committed offset only when the hole before it is wider than one offset, and not at all while nothing
is committed yet (`faust.transport.consumer.Consumer._new_offset`). So if batch 2 were acked before batch 1, the
commit could pass batch 1's events, and a crash before batch 1 is published would lose them (the path we found
after one rebalance-test run lost 1 of 3,000 events). Acked in take order, every partition's acked offsets grow
contiguously from the committed one and that check never matters.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


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
