"""Hot adapter swap: promotions and rollbacks are announced on the control topic `<prefix>.adapters`; every worker
loads the announced adapter in the background and switches between batches.

Every worker must see every announcement, so the control topic is read by a plain consumer outside the consumer
group (one partition, assigned, starting at its end: the registry's current version was loaded at start). A batch
uses the classifier it started with; the next one uses the new adapter. An adapter that fails to load, or whose labels
differ from the serving taxonomy (routes are topics: changing them needs a restart), is refused: the worker keeps
serving its current adapter, logs why and sets `qcat_adapter_behind`.

An announcement only names a version: the worker loads it from its own registry (`QCAT_REGISTRY`), and by default
only if it is the registry's current version, so writing to the control topic cannot make workers serve anything
that was not promoted. `QCAT_SERVE_ADAPTERS=registered` accepts any registered version; `QCAT_ANNOUNCED_PATHS`
allows loading the announced path when no registry holds the version.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from qcat.classifier import Classifier
from qcat.control import ensure_control_topic
from qcat.errors import RegistryError
from qcat.registry import Registry
from qcat.schemas.events import AdapterAnnouncement
from qcat.shadow import shadow_of
from qcat.worker.metrics import WorkerMetrics
from qcat.worker.settings import WorkerSettings
from qcat.worker.shadow import Shadow
from qcat.worker.unparseable import unparseable_reason

log = structlog.get_logger(__name__)
RECREATED_CHECK_S = 2.0
"""How often the watcher checks that the control topic was not recreated behind its position."""


class Serving:
    """The classifier the next batch will use, and the candidate in shadow beside it, if any."""

    def __init__(self, classifier: Classifier, shadow: Shadow | None = None) -> None:
        self.classifier = classifier
        self.shadow = shadow


class AdapterWatcher:
    def __init__(
        self,
        settings: WorkerSettings,
        topic: str,
        serving: Serving,
        metrics: WorkerMetrics,
        load: Callable[[Path], Classifier],
    ) -> None:
        self.settings, self.topic, self.serving, self.metrics, self.load = settings, topic, serving, metrics, load
        self.watching = asyncio.Event()
        self._one_at_a_time = asyncio.Lock()

    async def run(self) -> None:
        registry = self.settings.registry
        if registry is not None:
            await self._sync_shadow(Registry(registry))
        follow = asyncio.create_task(self._follow_registry(Registry(registry))) if registry is not None else None
        try:
            await self._follow_announcements()
        finally:
            if follow is not None:
                follow.cancel()

    async def _follow_registry(self, registry: Registry) -> None:
        """Announcements make swaps prompt; this makes them certain. An announcement can be lost (a broker that
        restarted empty recreates the control topic behind this worker's position), so every
        `registry_poll_interval` seconds a change of the registry's current version is served as if announced."""
        loop = asyncio.get_running_loop()
        seen = self.serving.classifier.adapter_version
        while True:
            await asyncio.sleep(self.settings.registry_poll_interval)
            try:
                current = await loop.run_in_executor(None, registry.current)
            except Exception as error:  # noqa: BLE001 - a damaged pointer or a store's hiccup must not end the follower
                log.error("cannot read the registry's current version", error=str(error)[:300])
                continue
            if current is not None and current != seen:
                seen = current
                await self.serve(AdapterAnnouncement(action="promote", version=current, path=registry.url))
            await self._sync_shadow(registry)

    async def _sync_shadow(self, registry: Registry) -> None:
        """The registry's shadow pointer, served as if announced when it differs from this worker's shadow."""
        try:
            pointer = await asyncio.get_running_loop().run_in_executor(None, shadow_of, registry)
        except Exception as error:  # noqa: BLE001 - as for the current version: the follower goes on
            log.error("cannot read the registry's shadow pointer", error=str(error)[:300])
            return
        shadow = self.serving.shadow
        serving_now = (shadow.classifier.adapter_version, shadow.sample) if shadow is not None else None
        if pointer == serving_now:
            return
        if pointer is None:
            announcement = AdapterAnnouncement(action="unshadow", version="none", path=registry.url)
        else:
            announcement = AdapterAnnouncement(
                action="shadow", version=pointer[0], path=registry.url, sample=pointer[1]
            )
        await self.serve(announcement)

    async def _follow_announcements(self) -> None:
        await ensure_control_topic(self.settings)
        await self._read_announcements(from_start=False)
        while True:  # recreated: read from its start by a fresh consumer, so that no fetch state carries over
            log.warning("the control topic was recreated behind this worker; reading it from its start")
            await self._recreate_control_topic()
            await self._read_announcements(from_start=True)

    async def _recreate_control_topic(self) -> None:
        """Create the topic again if no one did yet: a consumer assigned to a missing topic would not learn of it
        until its metadata refresh, minutes later, and announcements meanwhile would wait."""
        while True:
            try:
                await ensure_control_topic(self.settings)
                return
            except Exception as error:  # noqa: BLE001 - a broker still restarting: try again, not ready meanwhile
                log.error("cannot create the control topic; retrying", error=str(error)[:300])
                await asyncio.sleep(RECREATED_CHECK_S)

    async def _read_announcements(self, from_start: bool) -> None:
        """Serve the control topic's announcements, from its end (the registry's current version was loaded at
        start) or its start, until the topic turns out recreated. Readiness says `following_adapters: false` from
        then until the next reader is in place."""
        # A position the topic no longer has (retention passed it) resumes at the earliest offset: all of it unread
        consumer = AIOKafkaConsumer(
            **self.settings.kafka_client_options(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            partition = TopicPartition(self.topic, 0)
            consumer.assign([partition])
            if from_start:
                await consumer.seek_to_beginning(partition)
            else:
                await consumer.seek_to_end(partition)
            last = await _record_before(consumer, partition)  # what a recreated topic holds something else than
            self.watching.set()
            checked = time.monotonic()
            while True:
                for message in (await consumer.getmany(partition, timeout_ms=1000)).get(partition, []):
                    last = message
                    if (why := unparseable_reason(message.headers)) is not None:
                        self.metrics.adapter_swaps.labels("invalid").inc()
                        log.error("unparseable adapter announcement skipped", offset=message.offset, why=why[:300])
                        continue
                    await self.handle(message.value)
                if time.monotonic() - checked >= RECREATED_CHECK_S:
                    checked = time.monotonic()
                    if await _recreated(consumer, partition, last):
                        self.watching.clear()
                        return
        finally:
            await consumer.stop()

    async def handle(self, raw: bytes | None) -> None:
        try:
            announcement = AdapterAnnouncement.model_validate_json(raw or b"")
        except ValidationError as error:
            self.metrics.adapter_swaps.labels("invalid").inc()
            log.error("invalid adapter announcement ignored", error=str(error)[:300])
            return
        await self.serve(announcement)

    async def serve(self, announcement: AdapterAnnouncement) -> None:
        """Load the announced version, if this worker may serve it, and switch to it between batches (or, for
        `shadow`, score a share of events with it beside the serving adapter; `unshadow` stops that)."""
        async with self._one_at_a_time:
            if announcement.action in ("shadow", "unshadow"):
                await self._shadow(announcement)
            else:
                await self._serve(announcement)

    async def _shadow(self, announcement: AdapterAnnouncement) -> None:
        shadow, version = self.serving.shadow, announcement.version
        if announcement.action == "unshadow":
            self.serving.shadow = None
            self.metrics.shadow.set(0)
            log.info("shadow scoring stopped", candidate=shadow.classifier.adapter_version if shadow else None)
            return
        sample = announcement.sample or 1.0
        if shadow is not None and (shadow.classifier.adapter_version, shadow.sample) == (version, sample):
            return
        try:
            if self.settings.registry is None:
                raise RegistryError("no registry to look the candidate up in (set QCAT_REGISTRY)")
            path = Registry(self.settings.registry).path(version)  # registered versions only, never a path
            loaded = await self._load_in_passing_thread(lambda: self.load(path))
        except Exception as error:  # noqa: BLE001 - a candidate that cannot load is not scored; serving goes on
            self._refuse("failed", announcement, f"shadow: {type(error).__name__}: {error}")
            return
        if loaded.taxonomy.names != self.serving.classifier.taxonomy.names:
            self._refuse("refused", announcement, "shadow: its labels differ from the serving taxonomy")
            return
        self.serving.shadow = Shadow(loaded, sample)
        self.metrics.shadow.set(1)
        log.info("shadow scoring started", candidate=version, sample=sample)

    async def _serve(self, announcement: AdapterAnnouncement) -> None:
        current = self.serving.classifier
        if announcement.version == current.adapter_version:
            return
        log.info("loading announced adapter", version=announcement.version, action=announcement.action)
        try:  # resolved in the thread too: from a registry in a bucket, that is a download
            loaded = await self._load_in_passing_thread(lambda: self.load(self._resolve(announcement)))
        except RegistryError as error:  # not a version this worker may serve
            self._refuse("refused", announcement, str(error))
            return
        except Exception as error:  # noqa: BLE001 - whatever breaks the load, the worker keeps serving
            self._refuse("failed", announcement, f"{type(error).__name__}: {error}")
            return
        if loaded.adapter_version != announcement.version:
            why = f"the {self.settings.classifier} backend served {loaded.adapter_version}: it does not load adapters"
            self._refuse("refused", announcement, why)
            return
        if loaded.taxonomy.names != current.taxonomy.names:
            self._refuse("refused", announcement, "its labels differ from the serving taxonomy; restart the workers")
            return
        self.serving.classifier = loaded
        self.metrics.adapter_swaps.labels("swapped").inc()
        self.metrics.adapter_behind.set(0)
        self.metrics.serving(loaded, self.settings.confidence_threshold)
        log.info(
            "adapter swapped",
            previous=current.adapter_version,
            adapter=loaded.adapter_version,
            adapter_review_threshold=loaded.routing.review_threshold,
        )

    async def _load_in_passing_thread(self, load: Callable[[], Classifier]) -> Classifier:
        """Load off the event loop in a thread that ends afterwards: torch's OpenMP worker threads belong to the
        thread that starts them, and a second long-lived team would slow the inference thread's (worker/main.py)."""
        loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qcat-adapter-loader")
        try:
            return await asyncio.get_running_loop().run_in_executor(loader, load)
        finally:
            loader.shutdown(wait=False)

    def _resolve(self, announcement: AdapterAnnouncement) -> Path:
        """The version in this worker's registry (downloaded if the registry is a store) if the serving policy
        allows it; else the announced path, where that is allowed (see the module)."""
        settings, version = self.settings, announcement.version
        try:
            if settings.registry is None:
                raise RegistryError("no registry to look the version up in (set QCAT_REGISTRY)")
            registry = Registry(settings.registry)
            if settings.serve_adapters == "promoted" and registry.current() != version:
                raise RegistryError(
                    f"{version} is not the registry's current version ({registry.current()}); workers serve only "
                    "promoted versions (QCAT_SERVE_ADAPTERS=registered serves any registered one)"
                )
            path = registry.path(version)
        except RegistryError:
            if not settings.announced_paths:
                raise
            path = Path(announcement.path)
        log.info("announced adapter resolved", version=version, path=str(path))
        return path

    def _refuse(self, result: str, announcement: AdapterAnnouncement, why: str) -> None:
        self.metrics.adapter_swaps.labels(result).inc()
        self.metrics.adapter_behind.set(1)
        log.error(
            "announced adapter not served; keeping the current one",
            version=announcement.version,
            serving=self.serving.classifier.adapter_version,
            why=why[:500],
        )


async def _recreated(consumer: AIOKafkaConsumer, partition: TopicPartition, last: ConsumerRecord | None) -> bool:
    """Whether the control topic was recreated (a broker that lost its storage) since `last` was read: everything
    in it is then unread. A position past the topic's end says so; a recreated topic that already holds as many
    announcements as before does not, so the record before the position is read again and compared with `last`."""
    end = (await consumer.end_offsets([partition]))[partition]
    position = await consumer.position(partition)
    if position > end:
        return True
    if last is None or position != last.offset + 1:
        return False
    before = await _record_before(consumer, partition)
    return before is not None and (before.timestamp, before.value) != (last.timestamp, last.value)


async def _record_before(consumer: AIOKafkaConsumer, partition: TopicPartition) -> ConsumerRecord | None:
    """The record just before the consumer's position, read again (None when the topic no longer has it: retention
    passed it); the position stays where it was."""
    position = await consumer.position(partition)
    if position == 0:
        return None
    consumer.seek(partition, position - 1)
    records = (await consumer.getmany(partition, timeout_ms=1000, max_records=1)).get(partition, [])
    consumer.seek(partition, position)
    return records[0] if records and records[0].offset == position - 1 else None
