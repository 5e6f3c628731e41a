"""`qcat send`: a sample producer. Questions from a file become QuestionEvents on `<prefix>.incoming`, at a rate,
with the worker's connection settings (QCAT_BROKERS, QCAT_SECURITY_PROTOCOL, QCAT_SASL_*, QCAT_SSL_*)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaProducer

from qcat.errors import DataError, KafkaError
from qcat.kafka import KafkaSettings, kafka_errors
from qcat.schemas.events import QuestionEvent
from qcat.schemas.topics import Topics


def read_questions(path: Path) -> list[str]:
    """`.jsonl` rows with a `text` field, or one question per line."""
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [json.loads(line)["text"] for line in lines] if path.suffix == ".jsonl" else lines
    if not texts:
        raise DataError(f"{path} holds no questions")
    return texts


async def send(settings: KafkaSettings, texts: list[str], *, rate: float, count: int) -> int:
    """Send `count` questions (cycling through `texts`) at about `rate` per second; returns how many were acked."""
    producer = AIOKafkaProducer(**settings.kafka_client_options(), acks="all", linger_ms=5)
    try:
        with kafka_errors(settings, "cannot connect to"):
            await producer.start()
    except KafkaError:
        await producer.stop()  # a producer that failed to start still holds its client
        raise
    topic = Topics.build(settings.topic_prefix).incoming
    started = time.monotonic()
    try:
        pending = []
        for index in range(count):
            event = QuestionEvent(event_id=uuid.uuid4().hex, text=texts[index % len(texts)])
            pending.append(await producer.send(topic, event.model_dump_json().encode(), key=event.event_id.encode()))
            ahead = started + (index + 1) / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count
