"""The feedback loop left alone: the README recipe's adapter is promoted, corrections arrive, and two nightly
`qcat retrain` runs in a row each end promoted (0) or refused with paired figures (3), never "not comparable"; then a
candidate in shadow scores live events beside the serving adapter and changes no route."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qcat.corrections import CorrectionStore
from qcat.manifest import read_manifest
from qcat.schemas.events import CorrectionEvent
from qcat.schemas.topics import Topics
from tests.integration.kafka import ROOT, WorkerProcess, consume, produce, question, run_qcat, unique

TREC = ROOT / "data" / "trec"
ENV = dict(os.environ)
FAST = ("--base-model", "tiny-qwen3", "--dtype", "float32", "--epochs", "2", "--batch-size", "32")


def rows(path: Path, limit: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()[:limit]]


def routes(broker: str, topics: Topics, ids: set[str]) -> dict[str, list[str]]:
    """Every route or review record of these events: event id -> the topics it was published to."""
    names = [topics.review, *topics.routes.values()]

    def seen(collected: Any) -> set[str]:
        return {e["event_id"] for topic in names for e in collected.values(topic)} & ids

    got = consume(broker, names, lambda c: seen(c) >= ids, timeout=120)
    placed: dict[str, list[str]] = {}
    for topic in names:
        for event in got.values(topic):
            if event["event_id"] in ids:
                placed.setdefault(event["event_id"], []).append(topic)
    return placed


def test_nightly_retrains_never_stall_and_a_shadow_changes_no_route(broker: str, tmp_path: Path) -> None:
    """Two retrains in a row, each exit 0 or 3 with the gate's paired figures; gate-set corrections kept out of
    training, a correction with a label outside the taxonomy skipped and reported; a shadow leaves every route as it
    was, each event routed exactly once, and its tallies reach the shadow topic."""
    base, gate = tmp_path / "base.jsonl", tmp_path / "gate.jsonl"
    base.write_text("".join(json.dumps(row) + "\n" for row in rows(TREC / "train.jsonl", 1200)))
    gate_rows = rows(TREC / "test.jsonl", 300)
    gate.write_text("".join(json.dumps(row) + "\n" for row in gate_rows))
    registry = tmp_path / "registry"
    trained = run_qcat(ENV, "train", base, "--out", tmp_path / "v1", *FAST)  # the README recipe: a held-out split
    assert trained.returncode == 0, trained.stderr[-2000:]
    version = run_qcat(ENV, "adapters", "add", tmp_path / "v1", "--registry", registry).stdout.strip().splitlines()[-1]
    assert run_qcat(ENV, "adapters", "promote", version, "--registry", registry).returncode == 0

    store = CorrectionStore(tmp_path / "corrections")
    corrections = [
        CorrectionEvent(correction_id=f"c{i}", event_id=f"e{i}", text=row["text"], label=row["label"], source="r")
        for i, row in enumerate(rows(TREC / "train.jsonl", 1300)[1200:])
    ]
    in_gate = CorrectionEvent(correction_id="g", event_id="g", text=gate_rows[0]["text"], label="HUM", source="r")
    outside = CorrectionEvent(correction_id="o", event_id="o", text="What is a blorp ?", label="OLD", source="r")
    store.append([*corrections, in_gate, outside], writer="test")

    summaries = []
    for night in ("1", "2"):
        done = run_qcat(
            ENV, "retrain", "--data", base, "--corrections", tmp_path / "corrections", "--eval", gate,
            "--registry", registry, "--work", tmp_path / f"work{night}", *FAST,
        )  # fmt: skip
        assert done.returncode in (0, 3), done.stdout[-2000:] + done.stderr[-2000:]
        assert "not comparable" not in done.stdout + done.stderr
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        assert summary["promoted"] is (done.returncode == 0)
        assert summary["corrections_in_gate_set"] == 1
        assert summary["corrections_outside_taxonomy"] == {"OLD": 1}
        assert {"candidate_accuracy", "current_accuracy", "low", "high", "p_value"} <= set(summary["gate"])
        summaries.append(summary)

    prefix = unique("t-night")
    topics = Topics.build(prefix, read_manifest(tmp_path / "v1").taxonomy)
    # the registry poll is slow here: the worker serves what was current at start, before and during the shadow
    worker = WorkerProcess(broker, prefix, tmp_path, registry=registry, registry_poll_interval=3600).start()
    try:
        texts = [row["text"] for row in gate_rows[:60]]
        produce(broker, topics.incoming, [(f"a{i}".encode(), question(f"a{i}", t), []) for i, t in enumerate(texts)])
        before = routes(broker, topics, {f"a{i}" for i in range(len(texts))})
        env = {**ENV, "QCAT_BROKERS": broker, "QCAT_TOPIC_PREFIX": prefix}
        shadowed = run_qcat(env, "adapters", "shadow", summaries[-1]["version"], "--registry", registry, "--announce")
        assert shadowed.returncode == 0, shadowed.stderr[-2000:]
        worker.wait_for_metric("qcat_shadow", 1)
        produce(broker, topics.incoming, [(f"b{i}".encode(), question(f"b{i}", t), []) for i, t in enumerate(texts)])
        after = routes(broker, topics, {f"b{i}" for i in range(len(texts))})
        assert all(len(placed) == 1 for placed in [*before.values(), *after.values()])  # each routed exactly once
        assert [before[f"a{i}"] for i in range(len(texts))] == [after[f"b{i}"] for i in range(len(texts))]
        assert worker.wait_for_metric("qcat_shadow_scored_total", len(texts)) >= len(texts)
        compared = run_qcat(env, "adapters", "compare", summaries[-1]["version"], "--registry", registry)
        assert compared.returncode == 0, compared.stderr[-2000:]
        evidence = json.loads(compared.stdout.strip().splitlines()[-1])
        assert evidence["events"] >= len(texts)
    finally:
        worker.stop()
