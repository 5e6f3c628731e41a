"""The control topic `<prefix>.adapters`: promotions and rollbacks announced to running workers (worker/hot_swap.py
follows it). One partition, so every worker reads every announcement in order."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from qcat.errors import KafkaError
from qcat.kafka import KafkaSettings, kafka_errors
from qcat.schemas.events import AdapterAnnouncement
from qcat.schemas.topics import Topics


async def ensure_control_topic(settings: KafkaSettings) -> str:
    """Create the control topic if it is missing; returns its name."""
    topic = Topics.build(settings.topic_prefix).adapters
    admin = AIOKafkaAdminClient(**settings.kafka_client_options())
    await admin.start()
    try:
        response = await admin.create_topics(
            [NewTopic(topic, num_partitions=1, replication_factor=settings.replication_factor)]
        )
    finally:
        await admin.close()
    for entry in response.topic_errors:
        if entry[1] not in (0, TopicAlreadyExistsError.errno):
            raise KafkaError(f"cannot create the control topic {topic}: Kafka error code {entry[1]} {entry[2:]}")
    return topic


async def publish(settings: KafkaSettings, announcement: AdapterAnnouncement) -> None:
    """Publish a promotion or rollback; returns once the broker has it."""
    topic = await ensure_control_topic(settings)
    producer = AIOKafkaProducer(**settings.kafka_client_options(), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, announcement.model_dump_json().encode(), key=announcement.version.encode())
    finally:
        await producer.stop()


def announce(
    action: Literal["promote", "rollback", "shadow", "unshadow"],
    version: str,
    path: Path,
    settings: KafkaSettings,
    sample: float | None = None,
) -> str:
    """Tell running workers that the registry now points to `version` (or puts it in shadow, or takes it out);
    returns the control topic's name."""
    message = AdapterAnnouncement(action=action, version=version, path=str(path.resolve()), sample=sample)
    consequence = (
        f". The registry now points to {version}; running workers keep their adapter until it is announced (re-run "
        "with --announce), their registry poll finds it, or they restart"
    )
    with kafka_errors(settings, f"cannot announce {version} on", consequence):
        asyncio.run(publish(settings, message))
    return Topics.build(settings.topic_prefix).adapters
