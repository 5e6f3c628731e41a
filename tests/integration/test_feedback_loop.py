"""The feedback loop end to end on the real broker: questions -> corrections -> `qcat retrain --announce` -> the
running worker swaps adapters between batches and the corrected questions land on their new route, while a steady
stream flows through the swap with nothing lost. Then an announced corrupt adapter is refused and serving goes on."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from qcat.cli import app
from tests.integration.kafka import WorkerProcess, consume, produce, question, run_qcat, unique
from tests.unit.test_training import SUBJECTS, TEMPLATES

TINY = ("--base-model", "tiny-qwen3")
WHERE = [t.format(s) for t in TEMPLATES["LOC"] if t.startswith("Where") for s in SUBJECTS]


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def qcat(*args: object) -> None:
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output


def ask(broker: str, prefix: str, questions: dict[str, str]) -> None:
    produce(broker, f"{prefix}.incoming", [(i.encode(), question(i, text), []) for i, text in questions.items()])


def categorized(broker: str, prefix: str, ids: set[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
    got = consume(
        broker,
        [f"{prefix}.categorized"],
        lambda c: ids <= {e["event_id"] for e in c.values(f"{prefix}.categorized")},
        timeout=timeout,
    )
    events = {e["event_id"]: e for e in got.values(f"{prefix}.categorized") if e["event_id"] in ids}
    assert set(events) == ids, f"missing {sorted(ids - set(events))[:10]}"
    return events


def test_corrections_retrain_and_hot_swap(broker: str, tmp_path: Path) -> None:
    prefix = unique("t-loop")
    base = write(
        tmp_path / "base.jsonl",
        [{"text": t.format(s), "label": label} for label, ts in TEMPLATES.items() for t in ts for s in SUBJECTS],
    )
    unaffected = [row for row in map(json.loads, base.read_text().splitlines()) if not row["text"].startswith("Where")]
    fixed_eval = write(tmp_path / "eval.jsonl", unaffected)
    registry = tmp_path / "registry"
    training = ("--dtype", "float32", "--epochs", 15, "--learning-rate", "2e-3", "--batch-size", 16, *TINY)
    qcat("train", base, "--eval", fixed_eval, "--out", tmp_path / "v1", *training)
    qcat("adapters", "add", tmp_path / "v1", "--registry", registry)
    v1 = json.loads((tmp_path / "v1" / "qcat-manifest.json").read_text())["version"]
    qcat("adapters", "promote", v1, "--registry", registry)

    worker = WorkerProcess(broker, prefix, tmp_path, registry=registry, confidence_threshold=0).start()
    try:
        # 1. the adapter labels "Where ..." questions LOC
        ask(broker, prefix, {f"w{i}": text for i, text in enumerate(WHERE)})
        before = categorized(broker, prefix, {f"w{i}" for i in range(len(WHERE))})
        assert {e["adapter_version"] for e in before.values()} == {v1}
        assert sum(e["label"] == "LOC" for e in before.values()) >= 0.8 * len(WHERE)

        # 2. reviewers say they are NUM; a redelivered correction and a bad label come along
        corrections = [
            json.dumps(
                {
                    "correction_id": f"c-{event_id}",
                    "event_id": event_id,
                    "text": event["text"],
                    "predicted_label": event["label"],
                    "label": "NUM",
                    "source": "reviewer",
                    "adapter_version": event["adapter_version"],
                }
            ).encode()
            for event_id, event in before.items()
        ]
        bogus = json.dumps({"correction_id": "x", "event_id": "w0", "text": "t", "label": "BOGUS", "source": "r"})
        records = [(f"w{i}".encode(), value, []) for i, value in enumerate(corrections)]
        produce(broker, f"{prefix}.corrections", [*records, records[0], (b"w0", bogus.encode(), [])])
        worker.wait_for_metric("qcat_corrections_stored_total", len(WHERE))
        worker.wait_for_metric('qcat_dead_letters_total{reason="unknown_label"}', 1)
        stored = [
            line
            for path in (tmp_path / "corrections").glob("corrections-*.jsonl")
            for line in path.read_text().splitlines()
        ]
        assert len(stored) == len(WHERE)  # the redelivered one once

        # 3. a steady stream flows while retraining, swapping and afterwards
        steady_ids: list[str] = []
        swapped = threading.Event()

        def stream() -> None:
            """20 events every 0.1 s until after the swap, then one more second's worth."""
            deadline = float("inf")
            while time.monotonic() < deadline:
                chunk = [f"s{len(steady_ids) + i}" for i in range(20)]
                ask(broker, prefix, {i: f"How old is thing {i}?" for i in chunk})
                steady_ids.extend(chunk)
                if swapped.is_set() and deadline == float("inf"):
                    deadline = time.monotonic() + 1.0
                time.sleep(0.1)

        producer = threading.Thread(target=stream)
        producer.start()
        env = {
            **os.environ,
            "QCAT_BROKERS": broker,
            "QCAT_TOPIC_PREFIX": prefix,
            "QCAT_DTYPE": "float32",
            "QCAT_CORRECTIONS_DIR": str(tmp_path / "corrections"),
        }
        retrain = run_qcat(
            env, "retrain", "--data", base, "--eval", fixed_eval, "--registry", registry, "--work", tmp_path / "work",
            "--tolerance", "0.05", "--epochs", "15", "--learning-rate", "2e-3", "--batch-size", "16", *TINY,
            "--announce",
        )  # fmt: skip
        assert retrain.returncode == 0, retrain.stdout + retrain.stderr
        summary = json.loads(retrain.stdout.strip().splitlines()[-1])
        assert summary["promoted"] is True
        assert summary["corrections"] == len(WHERE)
        assert summary["conflicts"] == len(WHERE) - summary["corrections_held_out"]
        v2 = summary["version"]
        worker.wait_for_metric('qcat_adapter_swaps_total{result="swapped"}', 1)
        swapped.set()

        # 4. the same questions now land on NUM's route, labeled by the new adapter
        ids = {f"w2-{i}" for i in range(len(WHERE))}
        ask(broker, prefix, {f"w2-{i}": text for i, text in enumerate(WHERE)})
        after = categorized(broker, prefix, ids)
        assert {e["adapter_version"] for e in after.values()} == {v2}
        assert sum(e["label"] == "NUM" for e in after.values()) >= 0.8 * len(WHERE)
        num_route = f"{prefix}.route.NUM"
        expected = {i for i, e in after.items() if e["label"] == "NUM" and e["routed"]}
        assert len(expected) >= 0.7 * len(WHERE)  # the rest are in review, each with its reason
        assert all(e["review_reason"] for e in after.values() if not e["routed"])
        routed = consume(broker, [num_route], lambda c: expected <= {e["event_id"] for e in c.values(num_route)})
        assert expected == {e["event_id"] for e in routed.values(num_route) if e["event_id"] in ids}

        # 5. nothing of the steady stream was lost across the swap; each event names the adapter that labeled it
        producer.join()
        steady = categorized(broker, prefix, set(steady_ids))
        versions = [steady[i]["adapter_version"] for i in steady_ids]
        assert set(versions) == {v1, v2}  # the stream flowed through the swap
        assert set(versions[-20:]) == {v2}  # sent a second after the swap

        # 6. an announced adapter that cannot load is refused; the worker keeps serving v2
        broken = registry / "versions" / "broken"
        shutil.copytree(registry / "versions" / v2, broken)
        manifest = json.loads((broken / "qcat-manifest.json").read_text()) | {"version": "broken"}
        (broken / "qcat-manifest.json").write_text(json.dumps(manifest))
        (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
        promoted = run_qcat(env, "adapters", "promote", "broken", "--registry", registry, "--force", "--announce")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        worker.wait_for_metric('qcat_adapter_swaps_total{result="failed"}', 1)
        assert worker.wait_for_metric("qcat_adapter_behind", 1) == 1
        ask(broker, prefix, {"late": "Where is the moon?"})
        assert categorized(broker, prefix, {"late"})["late"]["adapter_version"] == v2
        assert "announced adapter not served" in worker.log_path.read_text()
    finally:
        worker.stop()
