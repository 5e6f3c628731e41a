"""Batches publish in any order but are acked in the order they were taken (worker.acks)."""

from __future__ import annotations

import asyncio

from qcat.worker.acks import AckOrder


async def run_batches(publish_seconds: list[float], abandoned: int | None = None) -> list[int]:
    order, acked = AckOrder(), list[int]()

    async def batch(number: int, seconds: float) -> None:
        turn = order.turn()  # taken in order, as the agent does
        await asyncio.sleep(seconds)  # publishing, which may finish in any order
        if number == abandoned:
            turn.finish(False)
            return
        ok = await turn.wait()
        if ok:
            acked.append(number)
        turn.finish(ok)

    await asyncio.gather(*(batch(number, seconds) for number, seconds in enumerate(publish_seconds)))
    return acked


def test_batches_that_finish_publishing_out_of_order_are_acked_in_take_order() -> None:
    assert asyncio.run(run_batches([0.05, 0.0, 0.02, 0.01])) == [0, 1, 2, 3]


def test_an_abandoned_batch_holds_back_every_later_ack() -> None:
    """A batch that is never acked (the worker is stopping) must not let later ones pass it: all are redelivered."""
    assert asyncio.run(run_batches([0.03, 0.0, 0.01], abandoned=0)) == []
    assert asyncio.run(run_batches([0.0, 0.03, 0.01], abandoned=1)) == [0]
