"""Faust's Kafka transport with a cheaper fetch loop: with a fast model, most of the worker's CPU went to Faust's.

Faust hands each fetched message to its streams inside `wait_first(callback(message), suspend_flow.wait())`: four
tasks and an `asyncio.wait` per message (much of the no-op worker's CPU, docs/worker.md), so that a delivery
blocked on a full stream buffer can be abandoned when a rebalance suspends the flow. With a backlog the buffer is
always full, and each delivery then also waits for room in a task of its own. This loop avoids blocked deliveries
instead: Faust marks a partition whose buffer passed its high-water mark (and stops fetching it) until the stream
has worked the buffer down to its low-water mark; the loop waits for that mark before delivering the partition's
next message (once per few hundred messages) and awaits each delivery directly. Faust's guarded path stays for when
the flow is suspended. The one difference: a delivery that still blocks and is overtaken by a rebalance completes
after it rather than being dropped, so that event may be categorized here as well as by the partition's new owner:
at-least-once, as always (`event_id` dedupes). Everything else (gap tracking, commit cadence, read offsets) is
Faust's loop as written in faust-streaming 0.15.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from qcat.worker import unparseable

YIELD_EVERY = 100
"""Messages between yields to the event loop, as in Faust's loop."""
STALE_AFTER_S = 1.0
"""The longest wait for a buffer's low-water mark (a slow model can take longer: then Faust's own path delivers)."""


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        """Faust's consumer with the transport's fetch wait: Faust fixes it at 1.5 s. Kafka answers a fetch as soon as
        any event is there, so this only bounds an idle fetch; brokers that hold every fetch for the full wait (the
        embedded one) add it to an event's latency at low load."""
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms  # aiokafka reads it when the consumer starts
        return consumer


class Consumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._worked_down = asyncio.Event()

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def on_buffer_drop(self, tp: Any) -> None:
        super().on_buffer_drop(tp)
        self._worked_down.set()

    async def _until_worked_down(self, tp: Any) -> None:
        """Until Faust's low-water mark for `tp`; a mark outliving `STALE_AFTER_S` is dropped: a rebalance clears
        buffers without one, and if the buffer is really still full, Faust's blocking delivery takes over."""
        try:
            async with asyncio.timeout(STALE_AFTER_S):
                while tp in self._buffered_partitions:
                    self._worked_down.clear()
                    await self._worked_down.wait()
        except TimeoutError:
            self.on_buffer_drop(TP(tp.topic, tp.partition))  # Faust's marks are its TPs; the fetch loop's, aiokafka's

    async def _drain_messages(self, fetcher: Any) -> None:  # noqa: PLR0912 - Faust's loop, in its shape, to compare
        callback, getmany = self.callback, self.getmany
        read_offsets = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        suspended = self.suspend_flow.is_set
        since_yield = 0
        try:
            while not (self._stopped.is_set() or fetcher._stopped.is_set()):
                self.diag.set_flag(CONSUMER_FETCHING)
                messages = cast(AsyncIterator[Any], getmany(timeout=1.0))
                await asyncio.sleep(0)  # getmany can return at once, again and again: let the loop run
                if self.should_stop:
                    continue
                async for tp, message in messages:
                    since_yield += 1
                    if since_yield > YIELD_EVERY:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset, last = message.offset, read_offsets[tp]
                    if last is not None and offset < last:
                        continue  # already delivered (Faust logs these at dev level and drops them too)
                    if last and offset - last > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, last + 1, offset)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if tp in self._buffered_partitions:  # Faust replaces the set: no local alias
                        await self._until_worked_down(tp)
                    if suspended():
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    else:
                        await callback(message)
                    read_offsets[tp] = offset
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if not self.transport.app.should_stop:
                raise
        except asyncio.CancelledError:
            if not self.transport.app.should_stop:
                raise
        except Exception:
            self.log.exception("Fetch loop crashed")
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


class Transport(faust_aiokafka.Transport):
    Consumer: ClassVar[type[Consumer]] = Consumer
    fetch_max_wait_ms = 1500  # Faust's, until use_fast_transport says otherwise


def use_fast_transport(app: Any, fetch_max_wait: float | None = None) -> None:
    """Give `app` this transport, with `fetch_max_wait` seconds per fetch (None: Faust's 1.5 s); call before anything
    asks for its topics or consumer. Records that cannot be parsed reach the streams as such (`worker.unparseable`),
    here and in every other consumer of the process, instead of ending the fetch loop."""
    unparseable.install()
    app.transport = Transport(app.conf.broker_consumer, app)
    if fetch_max_wait is not None:
        app.transport.fetch_max_wait_ms = round(1000 * fetch_max_wait)
