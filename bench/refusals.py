"""Reliability scenarios where the broker says no, or says nothing: records it refuses for good, and a broker that
stops answering mid-publish. Part of `python bench/reliability.py`; CI runs them through
tests/integration/test_reliability.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
from pathlib import Path
from typing import Any

from qcat.worker.broker import EmbeddedBroker
from tests.integration.kafka import WorkerProcess, consume, produce, question, unique

# Tansu checks each record produced to <topic> against <topic>.json, {"key": ..., "value": ...} as JSON
REFUSE_INVALID_JSON_LETTERS = {"properties": {"value": {"properties": {"reason": {"not": {"const": "invalid_json"}}}}}}
TREC6 = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
REFUSE_FORBIDDEN_TEXT = {"properties": {"value": {"properties": {"text": {"not": {"pattern": "forbidden"}}}}}}


def metric(process: WorkerProcess, sample: str) -> float:
    for line in process.get("/metrics").splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def readiness(process: WorkerProcess) -> tuple[int, dict[str, Any]]:
    try:
        return 200, json.loads(process.get("/readyz"))
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def stop_seconds(process: WorkerProcess) -> float:
    """SIGTERM, then how long the worker took to exit (Kubernetes' default grace period is 30 s)."""
    assert process.process is not None
    started = time.monotonic()
    process.process.terminate()
    try:
        process.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.process.kill()
    return round(time.monotonic() - started, 1)


def refused_records(tmp: Path, *, events: int) -> dict[str, Any]:
    """The broker refuses some records for good: its DLQ refuses dead letters of invalid JSON, and its categorized
    topic refuses questions containing "forbidden" (JSON Schemas on those topics). Bad and refused records are
    interleaved with `events` good ones, in the same record batches. Wanted: every good event categorized, the
    refused output replaced by its input's dead letter, the refused dead letters written to disk, readiness green,
    and SIGTERM obeyed within the grace period."""
    prefix = unique("r-refused")
    schemas = tmp / f"schemas-{prefix}"
    schemas.mkdir(parents=True)
    (schemas / f"{prefix}.dlq.json").write_text(json.dumps(REFUSE_INVALID_JSON_LETTERS))
    (schemas / f"{prefix}.categorized.json").write_text(json.dumps(REFUSE_FORBIDDEN_TEXT))
    good = [f"ok{i}" for i in range(events)]
    records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]] = []
    for i, event_id in enumerate(good):
        records.append((event_id.encode(), question(event_id, f"Where is place {i} ?"), []))
        if i % 50 == 7:  # a dead letter the DLQ refuses, one it accepts, and an output it refuses
            records.append((f"bad-json-{i}".encode(), b"{not json", []))
            records.append((f"empty-{i}".encode(), question(f"empty-{i}", "  "), []))
            records.append((f"forbidden-{i}".encode(), question(f"forbidden-{i}", "Is this forbidden ?"), []))
    invalid = [r[0].decode() for r in records if r[0] and r[0].startswith(b"bad-json")]  # type: ignore[union-attr]
    empty = [r[0].decode() for r in records if r[0] and r[0].startswith(b"empty")]  # type: ignore[union-attr]
    forbidden = [r[0].decode() for r in records if r[0] and r[0].startswith(b"forbidden")]  # type: ignore[union-attr]
    with EmbeddedBroker(schemas=schemas) as broker:
        process = WorkerProcess(broker.address, prefix, tmp, max_batch=64, confidence_threshold=0).start()
        try:
            produce(broker.address, f"{prefix}.incoming", records)
            topics = [f"{prefix}.categorized", f"{prefix}.dlq"]

            def done(c: Any) -> bool:
                keys = {r.key.decode() for t in topics for r in c.by_topic.get(t, [])}
                return keys >= {*good, *empty, *forbidden}

            got = consume(broker.address, topics, done, timeout=180)
            categorized = {r.key.decode() for r in got.by_topic.get(f"{prefix}.categorized", [])}
            letters = {r.key.decode(): json.loads(r.value) for r in got.by_topic.get(f"{prefix}.dlq", [])}
            deadline = time.monotonic() + 30  # the refused dead letters' lines: written before their offsets commit
            written: list[dict[str, Any]] = []
            while time.monotonic() < deadline and len(written) < len(invalid):
                written = [
                    json.loads(line) for p in (tmp / "refused").glob("*.jsonl") for line in p.read_text().splitlines()
                ]
                time.sleep(0.2)
            modes = {oct(path.stat().st_mode & 0o777) for path in (tmp / "refused").glob("*.jsonl")}
            routed = consume(  # every route and the review topic, read to their end
                broker.address, [f"{prefix}.review", *(f"{prefix}.route.{label}" for label in TREC6)], lambda c: False,
                timeout=5,
            )  # fmt: skip
            routed_keys = {r.key.decode() for records in routed.by_topic.values() for r in records}
            status, checks = readiness(process)
            result = {
                "events": events,
                "good_categorized": len(categorized & set(good)),
                "refused_outputs": len(forbidden),
                "refused_outputs_dead_lettered": sum(
                    letters.get(f, {}).get("reason") == "unpublishable" for f in forbidden
                ),
                "accepted_dead_letters": sum(letters.get(e, {}).get("reason") == "empty_text" for e in empty),
                "refused_dead_letters": len(invalid),
                "refused_dead_letters_on_disk": sum(
                    w["topic"] == f"{prefix}.dlq" and json.loads(w["value"]["data"])["reason"] == "invalid_json"
                    for w in written
                ),
                "disk_file_modes": sorted(modes),
                "metric_written_to_disk": metric(
                    process, f'qcat_refused_records_total{{outcome="written_to_disk",topic="{prefix}.dlq"}}'
                ),
                "metric_dead_lettered": metric(
                    process, f'qcat_refused_records_total{{outcome="dead_lettered",topic="{prefix}.categorized"}}'
                ),
                "ready_status": status,
                "ready_checks": checks,
                "refused_outputs_routed": len(routed_keys & set(forbidden)),
                "good_routed": len(routed_keys & set(good)),
            }
            result["stop_s"] = stop_seconds(process)
        finally:
            process.kill()
    result["lost"] = events - result["good_categorized"]
    return result


def stalled_publish(tmp: Path, *, events: int, stall_timeout: float = 2.0, stop_timeout: float = 25) -> dict[str, Any]:
    """The broker freezes (SIGSTOP) while the worker publishes: readiness must fail once a publish has waited
    `stall_timeout` seconds, and the stall show in /metrics; once the broker resumes, readiness recovers and every
    event is categorized. Then the broker freezes again and SIGTERM must still end the worker within `stop_timeout`."""
    prefix = unique("r-stall")
    ids = [f"s{i}" for i in range(events)]
    with EmbeddedBroker() as broker:
        assert broker.process is not None
        process = WorkerProcess(
            broker.address, prefix, tmp, max_batch=16, publish_stall_timeout=stall_timeout, stop_timeout=stop_timeout
        ).start()
        try:
            produce(broker.address, f"{prefix}.incoming", [(i.encode(), question(i, f"q {i} ?"), []) for i in ids])
            process.wait_for_metric(f'qcat_events_out_total{{topic="{prefix}.categorized"}}', 1)
            os.kill(broker.process.pid, signal.SIGSTOP)
            frozen_at, not_ready_after, stalled_gauge, checks = time.monotonic(), None, 0.0, {}
            while time.monotonic() - frozen_at < 30 and not_ready_after is None:
                status, checks = readiness(process)
                if status == 503:
                    not_ready_after = round(time.monotonic() - frozen_at, 1)
                    stalled_gauge = metric(process, "qcat_publish_stalled_seconds")
                time.sleep(0.2)
            os.kill(broker.process.pid, signal.SIGCONT)
            resumed_at, ready_again_after = time.monotonic(), None
            while time.monotonic() - resumed_at < 90 and ready_again_after is None:
                if readiness(process)[0] == 200:
                    ready_again_after = round(time.monotonic() - resumed_at, 1)
                time.sleep(0.2)
            topic = f"{prefix}.categorized"
            got = consume(
                broker.address, [topic], lambda c: {r.key.decode() for r in c.by_topic.get(topic, [])} >= set(ids), 180
            )
            lost = len(set(ids) - {r.key.decode() for r in got.by_topic.get(topic, [])})
            stalled_in_log = "publishing stalled" in process.log_path.read_text()
            os.kill(broker.process.pid, signal.SIGSTOP)
            stop_s = stop_seconds(process)
            os.kill(broker.process.pid, signal.SIGCONT)
        finally:
            process.kill()
    return {
        "events": events,
        "stall_timeout_s": stall_timeout,
        "not_ready_after_s": not_ready_after,
        "failed_check": [name for name, ok in checks.items() if not ok and name != "ready"],
        "stalled_gauge_s": stalled_gauge,
        "stall_logged": stalled_in_log,
        "ready_again_after_resume_s": ready_again_after,
        "lost": lost,
        "stop_timeout_s": stop_timeout,
        "stop_s_with_broker_frozen": stop_s,
    }
