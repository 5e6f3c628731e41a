"""The corrections store (idempotent, durable, latest wins) and how retraining merges corrections into base data."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qcat.corrections import CorrectionStore
from qcat.schemas.events import CorrectionEvent
from qcat.schemas.taxonomy import Taxonomy
from qcat.training.data import Example
from qcat.training.retrain import held_out, merge
from qcat.worker.corrections import sort_corrections, store_batch
from qcat.worker.process import Record

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def correction(cid: str, event_id: str, label: str, minutes: int = 0, text: str | None = None) -> CorrectionEvent:
    return CorrectionEvent(
        correction_id=cid,
        event_id=event_id,
        text=text or f"question {event_id}",
        label=label,
        source="test",
        corrected_at=T0 + timedelta(minutes=minutes),
    )


def test_redelivered_corrections_are_stored_once_and_the_latest_wins(tmp_path: Path) -> None:
    """Redeliveries (same id, event and label) are stored once, across batches and restarts; the latest
    correction of an event wins; the files are private (0600 in a 0700 folder)."""
    root = tmp_path / "corrections"
    store = CorrectionStore(root)
    assert store.append([correction("c1", "e1", "HUM"), correction("c2", "e2", "LOC")], writer="p0") == (2, [])
    assert store.append([correction("c1", "e1", "HUM")], writer="p0") == (0, [])  # redelivered
    assert store.append([correction("c4", "e4", "HUM")] * 2, writer="p0") == (1, [])  # twice in one batch
    assert CorrectionStore(root).append([correction("c1", "e1", "HUM")], writer="p1") == (0, [])  # after a restart
    assert store.append([correction("c3", "e1", "NUM", minutes=5)], writer="p1") == (1, [])
    latest = {c.event_id: c.label for c in CorrectionStore(root).latest()}
    assert latest == {"e1": "NUM", "e2": "LOC", "e4": "HUM"}
    lines = sum(len(path.read_text().splitlines()) for path in root.glob("corrections-*.jsonl"))
    assert lines == 4
    assert root.stat().st_mode & 0o777 == 0o700
    assert {path.stat().st_mode & 0o777 for path in root.glob("*.jsonl")} == {0o600}


def test_a_reused_correction_id_with_other_content_is_a_conflict(tmp_path: Path) -> None:
    """A correction_id already stored for another label or event is handed back as a conflict, not dropped; the
    first stays."""
    store = CorrectionStore(tmp_path)
    store.append([correction("c1", "e1", "HUM")], writer="p0")
    relabelled, moved = correction("c1", "e1", "LOC"), correction("c1", "e9", "HUM")
    assert store.append([relabelled, moved, correction("c2", "e2", "NUM")], writer="p0") == (1, [relabelled, moved])
    assert {c.event_id: c.label for c in CorrectionStore(tmp_path).latest()} == {"e1": "HUM", "e2": "NUM"}


def test_a_torn_last_line_is_skipped_and_rewritten(tmp_path: Path) -> None:
    store = CorrectionStore(tmp_path)
    store.append([correction("c1", "e1", "HUM")], writer="p0")
    path = next(tmp_path.glob("corrections-*.jsonl"))
    with path.open("a") as out:  # a crash in the middle of a write
        out.write(correction("c2", "e2", "LOC").model_dump_json()[:30])
    fresh = CorrectionStore(tmp_path)
    assert [c.correction_id for c in fresh.latest()] == ["c1"]
    assert fresh.append([correction("c2", "e2", "LOC")], writer="p0") == (1, [])  # the redelivery is stored whole
    assert {c.correction_id for c in CorrectionStore(tmp_path).latest()} == {"c1", "c2"}


def test_merge_overrides_base_rows_and_keeps_the_holdout_out_of_training() -> None:
    base = [Example(f"question e{i}", "LOC", f"b{i}") for i in range(40)] + [Example("other", "HUM", "o")]
    corrections = [correction(f"c{i}", f"e{i}", "NUM") for i in range(40)]
    merged = merge(base, corrections, holdout_fraction=0.2)
    held = {e.text for e in merged.holdout}
    assert 0 < len(held) < 40
    assert held == {c.text for c in corrections if held_out(c, 0.2)}
    assert not held & {e.text for e in merged.train}
    assert {e.label for e in merged.train if e.text != "other"} == {"NUM"}
    assert merged.conflicts == 40 - len(held)
    assert len(merged.train) == 41 - len(held)


def test_bad_corrections_become_dead_letters_with_reasons(tmp_path: Path) -> None:
    """Unknown labels, invalid JSON, a corrected_at in the future (it would outrank every later correction) and a
    conflicting reuse of a stored correction_id each become a dead letter with its reason."""
    taxonomy = Taxonomy.from_names(["HUM", "LOC", "NUM"])
    store = CorrectionStore(tmp_path)
    store.append([correction("c9", "e9", "HUM")], writer="t-1")
    good = correction("c1", "e1", "NUM").model_dump_json().encode()
    unknown = correction("c2", "e2", "BOGUS").model_dump_json().encode()
    future = correction("c3", "e3", "HUM").model_copy(update={"corrected_at": datetime(9999, 12, 31, tzinfo=UTC)})
    conflict = correction("c9", "e9", "LOC").model_dump_json().encode()
    records = [
        Record(b"e1", good, "t", 0, 1),
        Record(b"e2", unknown, "t", 1, 2),
        Record(b"x", b"{no", "t", 1, 3),
        Record(b"e3", future.model_dump_json().encode(), "t", 1, 4),
        Record(b"e9", conflict, "t", 1, 5),
    ]
    batch = sort_corrections(records, taxonomy=taxonomy, max_text_chars=100, dlq="t.dlq")
    store_batch(batch, store, writer_prefix="t", dlq="t.dlq")
    assert [event.correction_id for _, event in batch.valid[0]] == ["c1"]
    assert batch.stored == {0: 1, 1: 0}
    reasons = [(letter.offset, letter.reason.value) for letter in batch.dead_letters]
    assert reasons == [
        (2, "unknown_label"),
        (3, "invalid_json"),
        (4, "schema_violation"),
        (5, "conflicting_correction"),
    ]
    assert {output.topic for output in batch.outputs} == {"t.dlq"}


def test_retrain_loads_the_base_model_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training and scoring the held-out corrections with the candidate and the current adapter use copies of one
    loaded base model (a GGUF file or a hub model takes seconds to load each time)."""
    import qcat.pytorch.model
    from qcat.manifest import read_manifest
    from qcat.registry import Registry
    from qcat.settings import EngineSettings
    from qcat.training.config import Recipe, TrainConfig
    from qcat.training.retrain import RetrainRequest, retrain
    from tests.unit.test_training import learnable

    train, held_out = learnable()
    data, fixed_eval = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    for path, rows in ((data, train), (fixed_eval, held_out)):
        path.write_text("".join(json.dumps({"text": e.text, "label": e.label}) + "\n" for e in rows))
    corrections = [correction(f"c{i}", f"e{i}", e.label, text=e.text + " really") for i, e in enumerate(train[:10])]
    CorrectionStore(tmp_path / "corrections").append(corrections, writer="test")
    settings = EngineSettings(base_model="tiny-qwen3", device="cpu", dtype="float32")
    loads: list[str] = []
    build = qcat.pytorch.model.build_tiny_qwen3  # what every load of tiny-qwen3 runs, whoever asks for it
    monkeypatch.setattr(qcat.pytorch.model, "build_tiny_qwen3", lambda: loads.append("tiny-qwen3") or build())

    def run(work: str, seeds: int = 1) -> dict[str, object]:
        loads.clear()
        request = RetrainRequest(
            data=data,
            corrections=tmp_path / "corrections",
            eval_data=fixed_eval,
            registry=tmp_path / "registry",
            work=tmp_path / work,
            recipe=Recipe(config=TrainConfig(epochs=1, batch_size=16), seeds=seeds),
        )
        return retrain(request, settings)

    first = run("first")
    assert Registry(tmp_path / "registry").current_path() is not None, first
    second = run("second")
    check = second["held_out_corrections"]  # candidate and current adapter both scored on the held-out corrections
    assert check["rows"] >= 1, second
    assert check["current"] == first["version"], second
    assert loads == ["tiny-qwen3"]
    soup = run("soup", seeds=2)  # the candidate is the soup of two seeds, still from the one loaded base model
    assert loads == ["tiny-qwen3"]
    assert len(read_manifest(Registry(tmp_path / "registry").path(str(soup["version"]))).ingredients) == 2
