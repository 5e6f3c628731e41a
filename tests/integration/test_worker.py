"""The worker against the real broker: routing, review, dead letters, headers, metrics, and SIGKILL recovery."""

from __future__ import annotations

import json
import time
from pathlib import Path

from qcat.schemas.topics import topic_safe
from tests.integration.kafka import WorkerProcess, categorized_ids, consume, produce, question, unique

TREC6 = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
THRESHOLD = 0.18  # the random tiny model's confidences straddle this, so both routes and review get traffic


def test_events_are_routed_reviewed_or_dead_lettered(broker: str, tmp_path: Path) -> None:
    """N valid events give N categorized + N routed-or-reviewed records; each bad one a dead letter with its reason."""
    prefix = unique("t-route")
    worker = WorkerProcess(broker, prefix, tmp_path, confidence_threshold=THRESHOLD, max_text_chars=500).start()
    try:
        trace = [("traceparent", b"00-abc-def-01")]
        valid = [(f"e{i}".encode(), question(f"e{i}", f"Who was person number {i} ?"), trace) for i in range(40)]
        bad = [
            (b"b-utf8", b"\xff\xfe not utf-8", []),
            (b"b-json", b"{not json", []),
            (b"b-schema", json.dumps({"event_id": 7, "text": "typed wrong"}).encode(), []),
            (b"b-empty", question("b-empty", "   "), []),
            (b"b-long", question("b-long", "why " * 200), []),
        ]
        produce(broker, f"{prefix}.incoming", valid + bad)
        routes = [f"{prefix}.route.{topic_safe(label)}" for label in TREC6]
        topics = [f"{prefix}.categorized", f"{prefix}.review", f"{prefix}.dlq", *routes]

        def complete(c: object) -> bool:
            return len(c.values(f"{prefix}.categorized")) >= 40 and len(c.values(f"{prefix}.dlq")) >= 5  # type: ignore[attr-defined]

        got = consume(broker, topics, complete)
        categorized = {e["event_id"]: e for e in got.values(f"{prefix}.categorized")}
        assert set(categorized) == {f"e{i}" for i in range(40)}
        for event in categorized.values():
            assert event["label"] in TREC6
            assert event["base_model"] == "tiny-qwen3"
            assert event["adapter_version"] is None
        placed: dict[str, str] = {}
        for topic in [f"{prefix}.review", *routes]:
            for record in got.by_topic.get(topic, []):
                placed[record.key.decode()] = topic
                assert dict(record.headers)["traceparent"] == b"00-abc-def-01"
        assert set(placed) == set(categorized)
        for event_id, topic in placed.items():
            event = categorized[event_id]
            expected = (
                f"{prefix}.route.{topic_safe(event['label'])}"
                if event["confidence"] >= THRESHOLD
                else f"{prefix}.review"
            )
            assert topic == expected, event
        letters = {record.key.decode(): json.loads(record.value) for record in got.by_topic[f"{prefix}.dlq"]}
        assert {k: v["reason"] for k, v in letters.items()} == {
            "b-utf8": "undecodable",
            "b-json": "invalid_json",
            "b-schema": "schema_violation",
            "b-empty": "empty_text",
            "b-long": "text_too_long",
        }
        assert letters["b-json"]["payload"] == "{not json"
        assert letters["b-utf8"]["payload_encoding"] == "base64"
        assert all(letter["topic"] == f"{prefix}.incoming" and letter["offset"] >= 0 for letter in letters.values())
        metrics = worker.get("/metrics")
        assert 'qcat_dead_letters_total{reason="invalid_json"} 1.0' in metrics
        assert "qcat_model_info" in metrics
        assert "Who was person" not in worker.log(), "question text leaked into the logs"
        lines = [line for line in worker.log_path.read_text().splitlines() if line.strip()]
        not_json = [line for line in lines if not line.startswith("{") or not json.loads(line)]
        assert not not_json, f"the worker's log must be JSON lines only (no spinner, no raw library lines): {not_json}"
    finally:
        worker.stop()


def test_sigkill_mid_stream_loses_nothing(broker: str, tmp_path: Path) -> None:
    """A worker killed with SIGKILL mid-stream and restarted leaves every input event_id in the outputs."""
    prefix = unique("t-kill")
    total = 5_000
    first = WorkerProcess(broker, prefix, tmp_path, max_batch=32).start()
    produce(
        broker,
        f"{prefix}.incoming",
        [(f"k{i}".encode(), question(f"k{i}", f"How many {i} ?"), []) for i in range(total)],
    )
    seen_before = first.wait_for_metric(f'qcat_events_out_total{{topic="{prefix}.categorized"}}', at_least=300)
    first.kill()
    assert seen_before < total, "the worker finished before it was killed; kill earlier"
    second = WorkerProcess(broker, prefix, tmp_path, max_batch=32).start()
    try:
        ids = categorized_ids(broker, prefix, total, timeout=180)
    finally:
        second.stop()
    assert set(ids) == {f"k{i}" for i in range(total)}
    print(f"sigkill after {seen_before} outputs: {len(ids) - total} duplicates of {total}")


def test_a_backlog_drains_through_a_model_paced_classifier(broker: str, tmp_path: Path) -> None:
    """A backlog far beyond the stream buffer, at a second a batch: the fetch loop's waits for buffer room outlast
    its patience (worker/transport.py) and Faust's own delivery takes over; every event comes out, none stalls."""
    prefix = unique("t-backlog")
    total = 768
    produce(
        broker,
        f"{prefix}.incoming",
        [(f"p{i}".encode(), question(f"p{i}", f"Where is {i} ?"), []) for i in range(total)],
    )
    worker = WorkerProcess(broker, prefix, tmp_path, classifier="tests.helpers.slow:model_paced", max_batch=64).start()
    try:
        ids = categorized_ids(broker, prefix, total, timeout=120)
        assert worker.process is not None
        assert worker.process.poll() is None, worker.log()
    finally:
        worker.stop()
    assert set(ids) == {f"p{i}" for i in range(total)}


def test_inference_slower_than_session_timeout_keeps_the_loop_responsive(broker: str, tmp_path: Path) -> None:
    """Batches taking 8 s (session timeout 6 s) run off the event loop: it keeps answering, no rebalance follows.

    The embedded broker does not evict silent members, so the proof is the loop itself: the health endpoint,
    served by the same event loop that heartbeats and polls, answers within a second throughout.
    """
    prefix = unique("t-slow")
    worker = WorkerProcess(
        broker, prefix, tmp_path, classifier="tests.helpers.slow:slow", session_timeout=6, max_batch=4, max_wait=0.01
    ).start()
    try:
        produce(broker, f"{prefix}.incoming", [(f"s{i}".encode(), question(f"s{i}", "Why ?"), []) for i in range(12)])
        answered: list[float] = []
        deadline = time.monotonic() + 20  # spans two to three slow batches
        while time.monotonic() < deadline:
            started = time.monotonic()
            worker.get("/healthz")
            answered.append(time.monotonic() - started)
            time.sleep(0.2)
        got = consume(broker, [f"{prefix}.categorized"], lambda c: len(c.values(f"{prefix}.categorized")) >= 12, 120)
        assert {e["event_id"] for e in got.values(f"{prefix}.categorized")} == {f"s{i}" for i in range(12)}
        assert max(answered) < 1.0, f"event loop stalled for {max(answered):.1f}s"
        rebalances = [line for line in worker.get("/metrics").splitlines() if line.startswith("qcat_rebalances_total")]
        assert rebalances == ["qcat_rebalances_total 1.0"], rebalances  # the initial join only
    finally:
        worker.stop()
