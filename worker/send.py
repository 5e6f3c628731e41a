"""`qcat send`: a sample producer. Questions from a file become QuestionEvents on `<prefix>.incoming`, at a rate,
with the worker's connection settings (QCAT_BROKERS, QCAT_SECURITY_PROTOCOL, QCAT_SASL_*, QCAT_SSL_*)."""

from __future__ import annotations

import asyncio
import csv
import io
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
    """`.jsonl` rows with a `text` field, a `.csv` file with a `text` column, or one question per line."""
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    content = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(content)))
        if rows and "text" not in rows[0]:
            raise DataError(f"{path} has no text column (its columns: {', '.join(rows[0])})")
        texts = [row["text"] for row in rows if (row.get("text") or "").strip()]
    elif path.suffix == ".jsonl":
        texts = [_text(line, path, number) for number, line in enumerate(content.splitlines(), 1) if line.strip()]
    else:
        texts = [line for line in content.splitlines() if line.strip()]
    if not texts:
        raise DataError(f"{path} holds no questions")
    return texts


def _text(line: str, path: Path, number: int) -> str:
    try:
        row = json.loads(line)
    except ValueError as error:
        raise DataError(f"{path}:{number} is not JSON ({error}); each line must be an object with a text") from None
    if not isinstance(row, dict) or not isinstance(row.get("text"), str) or not row["text"].strip():
        raise DataError(f"{path}:{number} has no text (each line must be an object with a non-empty text)")
    return str(row["text"])


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
