"""`qcat send`, the sample producer of the compose stack: valid QuestionEvents on <prefix>.incoming."""

from __future__ import annotations

import json
import os
from pathlib import Path

from qcat.schemas.events import QuestionEvent
from qcat.worker.broker import free_port
from tests.integration.kafka import consume, run_qcat, unique


def test_send_produces_question_events(broker: str, tmp_path: Path) -> None:
    prefix = unique("t-send")
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps({"text": f"What is thing {i} ?"}) + "\n" for i in range(10)))
    env = {**os.environ, "QCAT_BROKERS": broker, "QCAT_TOPIC_PREFIX": prefix}
    result = run_qcat(env, "send", questions, "--count", "25", "--rate", "500", timeout=60)
    assert result.returncode == 0, result.stderr
    topic = f"{prefix}.incoming"
    got = consume(broker, [topic], lambda c: len(c.by_topic.get(topic, [])) >= 25)
    events = [QuestionEvent.model_validate_json(record.value) for record in got.by_topic[topic]]
    assert len(events) == 25
    assert len({e.event_id for e in events}) == 25
    assert {e.text for e in events} == {f"What is thing {i} ?" for i in range(10)}


def test_send_with_no_broker_is_one_error_line(broker: str, tmp_path: Path) -> None:
    """`--brokers` picks the broker; with none listening there, `qcat send` exits 5 with one line naming it, no
    traceback and no warning about an unclosed producer. The running broker proves the flag is used: the env
    points at it, and the flag wins."""
    questions = tmp_path / "q.txt"
    questions.write_text("What is it ?\n")
    nowhere = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "QCAT_BROKERS": broker, "PYTHONWARNINGS": "default"}
    result = run_qcat(env, "send", questions, "--count", "1", "--brokers", nowhere, timeout=120)
    assert result.returncode == 5, result.stdout + result.stderr
    assert f"cannot connect to Kafka at {nowhere}" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    assert "Unclosed" not in result.stderr
