"""The Faust agents the pipeline benchmark compares against.

- naive (default): per event, classify and `await topic.send()` for each output, as the seed recipe does, with qcat's
  own fast decoding (raw bytes, pydantic). Same contracts and no-op classifier as qcat's.
- naive with Faust records (`BENCH_NAIVE_RECORDS=1`): the same loop written as Faust's documentation writes
  agents: `faust.Record` models for the input and the output, serialized by Faust as JSON. Same fields on the wire
  (plus Faust's `__faust` type tag).
- consume-only (`BENCH_CONSUME_ONLY=1`): micro-batches with `take_events` like qcat's worker and does nothing with
  them; `/stats` reports how many arrived and when. Faust's own ceiling on this machine: no worker built on Faust's
  streams can move events faster. With `BENCH_FAST_TRANSPORT=1`, on qcat's transport (worker/transport.py): the
  ceiling of qcat's worker.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime

import faust

from qcat.classifier import DEFAULT_TAXONOMY, ConstantClassifier
from qcat.schemas.events import SCHEMA_VERSION, CategorizedEvent, LabelScore, QuestionEvent
from qcat.schemas.taxonomy import Taxonomy
from qcat.schemas.topics import Topics
from qcat.worker.main import use_event_loop
from qcat.worker.transport import use_fast_transport


class Question(faust.Record, serializer="json"):
    event_id: str
    text: str
    created_at: str | None = None


class Score(faust.Record, serializer="json"):
    label: str
    score: float


class Categorized(faust.Record, serializer="json"):
    event_id: str
    text: str
    label: str
    confidence: float
    scores: list[Score]
    truncated: bool
    adapter_version: str | None
    base_model: str
    latency_ms: float
    categorized_at: str
    schema_version: int = SCHEMA_VERSION


def main() -> None:
    use_event_loop(os.environ.get("QCAT_EVENT_LOOP", "asyncio"))  # the loop of the worker it is compared with
    prefix = os.environ["QCAT_TOPIC_PREFIX"]
    classifier = ConstantClassifier(Taxonomy.from_file(DEFAULT_TAXONOMY))
    topics = Topics.build(prefix, classifier.taxonomy)
    app = faust.App(
        f"{prefix}-naive",
        broker=f"kafka://{os.environ['QCAT_BROKERS']}",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=2,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=float(os.environ.get("QCAT_SESSION_TIMEOUT", "60")),  # as qcat's worker in the bench
        web_port=int(os.environ["QCAT_WEB_PORT"]),
        datadir=os.environ["QCAT_DATA_DIR"],
        autodiscover=False,
        store="memory://",
    )
    if os.environ.get("BENCH_FAST_TRANSPORT"):
        use_fast_transport(app)
    incoming = app.topic(topics.incoming, value_type=bytes, key_type=bytes)
    categorized = app.topic(topics.categorized)
    routes = {label: app.topic(name) for label, name in topics.routes.items()}

    stats = {"events": 0, "first": 0.0, "last": 0.0}

    async def consume_only(stream):  # type: ignore[no-untyped-def]
        async for events in stream.take_events(int(os.environ.get("QCAT_MAX_BATCH", "64")), within=0.05):
            stats["first"] = stats["first"] or time.time()
            stats["events"] += len(events)
            stats["last"] = time.time()

    @app.page("/stats")
    async def show_stats(web, request):  # type: ignore[no-untyped-def]
        return web.json(stats)

    async def naive(stream):  # type: ignore[no-untyped-def]
        async for value in stream:
            event = QuestionEvent.model_validate_json(value)
            (prediction,) = classifier.classify([event.text])
            out = (
                CategorizedEvent(
                    event_id=event.event_id,
                    text=event.text,
                    label=prediction.label,
                    confidence=prediction.confidence,
                    scores=tuple(LabelScore(label=k, score=v) for k, v in prediction.top(3)),
                    truncated=False,
                    adapter_version=None,
                    base_model="constant",
                    latency_ms=0.0,
                )
                .model_dump_json()
                .encode()
            )
            await categorized.send(key=event.event_id.encode(), value=out)
            await routes[prediction.label].send(key=event.event_id.encode(), value=out)

    questions = app.topic(topics.incoming, value_type=Question, key_type=bytes)
    categorized_records = app.topic(topics.categorized, value_type=Categorized)
    route_records = {label: app.topic(name, value_type=Categorized) for label, name in topics.routes.items()}

    async def naive_records(stream):  # type: ignore[no-untyped-def]
        async for question in stream:
            (prediction,) = classifier.classify([question.text])
            out = Categorized(
                event_id=question.event_id,
                text=question.text,
                label=prediction.label,
                confidence=prediction.confidence,
                scores=[Score(label=k, score=v) for k, v in prediction.top(3)],
                truncated=False,
                adapter_version=None,
                base_model="constant",
                latency_ms=0.0,
                categorized_at=datetime.now(UTC).isoformat(),
            )
            await categorized_records.send(key=question.event_id.encode(), value=out)
            await route_records[prediction.label].send(key=question.event_id.encode(), value=out)

    if os.environ.get("BENCH_CONSUME_ONLY"):
        app.agent(incoming, name="baseline")(consume_only)
    elif os.environ.get("BENCH_NAIVE_RECORDS"):
        app.agent(questions, name="baseline")(naive_records)
    else:
        app.agent(incoming, name="baseline")(naive)

    @app.page("/readyz")
    async def ready(web, request):  # type: ignore[no-untyped-def]
        return web.json({"ready": True})

    faust.Worker(app, loglevel="warning", redirect_stdouts=False, override_logging=False).execute_from_commandline()


if __name__ == "__main__":
    main()
