"""The Faust app: consume questions, micro-batch them (`take_events`), classify off the event loop, publish.

At-least-once: each event holds an extra reference until every output of its batch is acknowledged by the broker
(or, refused by it for good, dead-lettered or written to disk: `worker.publisher`); only then is its offset acked to
Faust's consumer and eligible for commit. A few batches publish in the background while the next one is classified,
and are acked in the order they were taken (`worker.acks`). A redelivered event is categorized again under the same
`event_id` (the message key), which consumers can dedupe on.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import faust
import structlog
from faust.auth import SASLCredentials, SSLCredentials
from prometheus_client import generate_latest

from qcat.classifier import Classifier
from qcat.corrections import CorrectionStore
from qcat.errors import PublishAbortedError
from qcat.schemas.topics import Topics
from qcat.worker.acks import BackgroundPublishing
from qcat.worker.corrections import CorrectionBatch, sort_corrections, store_batch
from qcat.worker.hot_swap import AdapterWatcher, Serving
from qcat.worker.metrics import WorkerMetrics
from qcat.worker.process import BatchResult, Output, Record, process_batch
from qcat.worker.publisher import BatchPublisher
from qcat.worker.refused import RefusedRecords
from qcat.worker.settings import WorkerSettings
from qcat.worker.shadow import correction_records
from qcat.worker.transport import use_fast_transport
from qcat.worker.unparseable import unparseable_reason

log = structlog.get_logger(__name__)
CORRECTIONS_BACKOFF, CORRECTIONS_BACKOFF_MAX = 0.5, 30.0
"""Seconds before the first retry of a corrections batch that could not be stored, doubling up to the maximum."""


def credentials(settings: WorkerSettings) -> Any:
    context = settings.ssl_context()
    if settings.security_protocol.startswith("SASL"):
        password = settings.sasl_password.get_secret_value() if settings.sasl_password else None
        return SASLCredentials(
            username=settings.sasl_username, password=password, ssl_context=context, mechanism=settings.sasl_mechanism
        )
    return SSLCredentials(context) if context is not None else None


def _faust_app(settings: WorkerSettings) -> faust.App:
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{host.strip()}" for host in settings.brokers.split(",")],
        broker_credentials=credentials(settings),
        broker_session_timeout=settings.session_timeout,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        stream_buffer_maxsize=max(4 * settings.micro_batch, 256),  # backpressure: fetching pauses beyond this
        producer_linger_ms=5,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_router_enabled=False,  # Faust's /router/ and /table/ pages show host names and table contents
        web_tables_enabled=False,
        autodiscover=False,
        store="memory://",
        datadir=str(settings.data_dir),
    )


def create_app(
    settings: WorkerSettings,
    classifier: Classifier,
    metrics: WorkerMetrics,
    load: Callable[[Path], Classifier] | None = None,
    inference: ThreadPoolExecutor | None = None,
) -> faust.App:
    """The worker's Faust app. `load` builds a classifier for an announced adapter (no hot swap without it);
    `inference` is the one thread that classifies (the one that loaded the model, see worker/main.py)."""
    settings = settings.with_micro_batch(classifier.preferred_batch)
    topics = Topics.build(settings.topic_prefix, classifier.taxonomy)
    serving = Serving(classifier)
    app = _faust_app(settings)
    use_fast_transport(app, settings.fetch_max_wait)  # before the first topic asks for it; reads unparseable records
    incoming = app.topic(topics.incoming, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    ready = asyncio.Event()
    executor = inference or ThreadPoolExecutor(max_workers=1, thread_name_prefix="qcat-inference")
    metrics.serving(classifier, settings.confidence_threshold)
    handle = partial(
        process_batch,
        topics=topics,
        threshold=settings.confidence_threshold,
        max_text_chars=settings.max_text_chars,
    )

    _declare_outputs(app, [app.topic(name, partitions=settings.partitions) for name in topics.all_outputs()])
    watcher = _follow_adapters(app, AdapterWatcher(settings, topics.adapters, serving, metrics, load)) if load else None

    _signal_ready(app, metrics, ready)

    publisher = BatchPublisher(
        settings.kafka_client_options(),
        metrics,
        dlq=topics.dlq,
        refused=RefusedRecords(settings.refused_dir),
        stall_timeout=settings.publish_stall_timeout,
    )
    background = BackgroundPublishing(
        publisher, lambda: app.consumer, partial(_observe, metrics=metrics, log_text=settings.log_text), app.crash
    )

    @app.agent(incoming)
    async def categorize(stream: Any) -> None:  # faust.StreamT's stubs lack take_events
        loop = asyncio.get_running_loop()
        try:
            async for events in stream.take_events(settings.micro_batch, within=settings.max_wait):
                for event in events:  # hold a reference: take_events' own ack must not let the offset be committed
                    event.message.incref()
                records = [_record(event) for event in events]
                metrics.events_in.labels(topics.incoming).inc(len(records))
                metrics.batch_size.observe(len(records))
                # the classifier is chosen per batch: an adapter swap takes effect between batches
                result: BatchResult = await loop.run_in_executor(
                    executor, partial(handle, shadow=serving.shadow), records, serving.classifier
                )
                await background.start(list(events), result)  # overlaps the next batch's inference
        finally:
            await background.finish()

    storing = asyncio.Event()
    _store_corrections(app, settings, topics, serving, metrics, publisher, executor, storing)
    _add_pages(app, metrics, lambda: _readiness(ready, watcher, publisher, storing))
    return app


def _readiness(
    ready: asyncio.Event, watcher: AdapterWatcher | None, publisher: BatchPublisher, storing: asyncio.Event
) -> dict[str, bool]:
    return {
        "in_group": ready.is_set(),
        "following_adapters": watcher is None or watcher.watching.is_set(),
        "publishing": not publisher.stalled(),
        "storing_corrections": storing.is_set(),
    }


def _signal_ready(app: faust.App, metrics: WorkerMetrics, ready: asyncio.Event) -> None:
    @app.on_partitions_assigned.connect  # type: ignore[arg-type]  # mode's signal stubs reject async receivers
    async def count_rebalance(sender: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        metrics.rebalances.inc()
        metrics.ready.set(1)
        ready.set()  # ready once in the group, even with no partitions (more replicas than partitions)
        assigned = kwargs.get("assigned") or (args[0] if args else set())  # Faust passes it positionally
        log.info("partitions assigned", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned))


def _declare_outputs(app: faust.App, outputs: list[Any]) -> None:
    @app.task
    async def declare_topics() -> None:
        for topic in outputs:
            await topic.maybe_declare()
        log.info("topics declared", outputs=[topic.get_topic_name() for topic in outputs])


def _follow_adapters(app: faust.App, watcher: AdapterWatcher) -> AdapterWatcher:
    @app.task
    async def watch_adapters() -> None:
        await watcher.run()

    return watcher


def _store_corrections(
    app: faust.App,
    settings: WorkerSettings,
    topics: Topics,
    serving: Serving,
    metrics: WorkerMetrics,
    publisher: BatchPublisher,
    executor: ThreadPoolExecutor,
    storing: asyncio.Event,
) -> None:
    corrections = app.topic(topics.corrections, key_type=bytes, value_type=bytes, partitions=settings.partitions)
    store = CorrectionStore(settings.corrections_dir)
    storing.set()

    async def stored(records: list[Record]) -> CorrectionBatch:
        """Sorted and stored, retried with backoff while the store cannot be written (a full disk, a lost volume):
        readiness says so meanwhile, and nothing is acked, so nothing is lost."""
        for attempt in itertools.count():
            batch = sort_corrections(
                records, taxonomy=serving.classifier.taxonomy, max_text_chars=settings.max_text_chars, dlq=topics.dlq
            )
            try:
                store_batch(batch, store, writer_prefix=topics.corrections, dlq=topics.dlq)
            except OSError as error:
                storing.clear()
                metrics.corrections_failed.inc()
                wait = min(CORRECTIONS_BACKOFF_MAX, CORRECTIONS_BACKOFF * 2**attempt)
                log.error("cannot store corrections; retrying", error=str(error)[:300], retry_in_s=wait)
                await asyncio.sleep(wait)
                continue
            storing.set()
            return batch
        raise AssertionError("unreachable")

    @app.agent(corrections)
    async def store_corrections(stream: Any) -> None:
        """Valid corrections to the store (fsynced), bad ones to the DLQ; offsets commit after both. While a candidate
        is in shadow, each valid correction is also scored by both adapters (`worker.shadow`)."""
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(settings.micro_batch, within=settings.max_wait):
            for event in events:  # as in categorize: take_events acks even when publishing is aborted
                event.message.incref()
            metrics.events_in.labels(topics.corrections).inc(len(events))
            batch = await stored([_record(event) for event in events])
            for partition, count in batch.stored.items():
                metrics.corrections.inc(count)
                log.info("corrections stored", new=count, received=len(batch.valid[partition]), partition=partition)
            if (shadow := serving.shadow) is not None:
                valid = [event for items in batch.valid.values() for _, event in items]
                texts, labels = [e.text for e in valid], [e.label for e in valid]
                scored = partial(
                    correction_records, texts, labels, serving.classifier, shadow, settings.confidence_threshold
                )
                for record in await loop.run_in_executor(executor, scored):
                    batch.outputs.append(Output(topics.shadow, None, record.model_dump_json().encode(), []))
            if batch.outputs:
                try:
                    await publisher.publish(batch.outputs)
                except PublishAbortedError:
                    return  # stopping: not acked, so redelivered
                _observe(batch, metrics=metrics, log_text=settings.log_text)
            for event in events:
                event.message.ack(app.consumer)


def _add_pages(app: faust.App, metrics: WorkerMetrics, is_ready: Callable[[], dict[str, bool]]) -> None:
    @app.page("/metrics")
    async def metrics_page(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; Prometheus reads plain text as exposition format 0.0.4.
        return web.bytes(generate_latest(metrics.registry), content_type="text/plain")

    @app.page("/healthz")
    async def liveness(web: Any, request: Any) -> Any:
        return web.json({"status": "alive"})

    @app.page("/readyz")
    async def readiness(web: Any, request: Any) -> Any:
        """Ready: in the consumer group, following the adapter announcements (with hot swap on), and no publish
        stalled beyond `publish_stall_timeout`. Each check is in the answer, so a 503 says which failed."""
        checks = is_ready()
        ready = all(checks.values())
        return web.json({"ready": ready, **checks}, status=200 if ready else 503)


def _record(event: Any) -> Record:
    message = event.message
    headers = message.headers or []
    if isinstance(headers, dict):
        headers = list(headers.items())
    if (why := unparseable_reason(headers)) is not None:
        return Record(message.key, message.value, message.topic, message.partition, message.offset, [], why)
    return Record(message.key, message.value, message.topic, message.partition, message.offset, list(headers))


def _observe(result: BatchResult, *, metrics: WorkerMetrics, log_text: bool) -> None:
    for letter in result.dead_letters:
        metrics.dead_letters.labels(letter.reason.value).inc()
        # not the error: it can quote the payload's field names; the DLQ record holds it
        log.warning(
            "dead letter",
            reason=letter.reason.value,
            topic=letter.topic,
            partition=letter.partition,
            offset=letter.offset,
        )
    if result.shadow_scored:
        metrics.shadow_scored.inc(result.shadow_scored)
        metrics.shadow_agreed.inc(result.shadow_agreed)
    for label, count in Counter(event.label for event in result.categorized).items():
        metrics.labels.labels(label).inc(count)
    for event in result.categorized:
        metrics.end_to_end_seconds.observe(event.latency_ms / 1000)
    if result.categorized:
        metrics.inference_seconds.observe(result.inference_seconds)
        # counts and timings at INFO; ids (and, with QCAT_LOG_TEXT, texts) only at DEBUG: at GPU rates they would be
        # megabytes of log a second
        log.info("batch categorized", n=len(result.categorized), inference_ms=round(1000 * result.inference_seconds, 1))
        fields: dict[str, Any] = {"event_ids": [e.event_id for e in result.categorized[:20]]}
        if log_text:
            fields["texts"] = [e.text for e in result.categorized[:20]]
        log.debug("batch events", **fields)
