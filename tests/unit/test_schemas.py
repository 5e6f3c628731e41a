"""The event contracts: strict, versioned, exported as JSON Schema, and free of heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

import qcat.schemas
from qcat.errors import ContractError
from qcat.schemas import CategorizedEvent, DeadLetter, DeadLetterReason, LabelScore, QuestionEvent, Taxonomy
from qcat.schemas.export import SCHEMA_DIR, render


def test_question_event_parses_wire_json() -> None:
    """A producer's JSON with an ISO timestamp parses into a QuestionEvent with schema_version 1."""
    event = QuestionEvent.model_validate_json(
        '{"event_id": "e1", "text": "Who was Galileo ?", "created_at": "2026-01-01T00:00:00Z"}'
    )
    assert event.schema_version == 1
    assert event.created_at.tzinfo is not None


@pytest.mark.parametrize(
    "payload",
    [
        '{"event_id": 1, "text": "x"}',  # wrong type: strict, no coercion
        '{"event_id": "e", "text": "x", "colour": "red"}',  # unknown field
        '{"event_id": "e", "text": "x", "schema_version": 2}',  # unknown version
        '{"text": "x"}',  # missing id
        '{"event_id": "e", "text": "x", "created_at": "2026-01-01T00:00:00"}',  # naive timestamp
    ],
)
def test_question_event_rejects_malformed(payload: str) -> None:
    """Wrong types, extra fields, unknown versions, missing ids and naive timestamps are refused."""
    with pytest.raises(ValidationError):
        QuestionEvent.model_validate_json(payload)


def test_categorized_event_round_trips() -> None:
    """A CategorizedEvent survives JSON and back unchanged."""
    event = CategorizedEvent(
        event_id="e1",
        text="q",
        label="HUM",
        confidence=0.9,
        scores=(LabelScore(label="HUM", score=0.9),),
        truncated=False,
        adapter_version="v1",
        base_model="tiny-qwen3",
        latency_ms=3.0,
    )
    assert CategorizedEvent.model_validate_json(event.model_dump_json()) == event


def test_dead_letter_reason_is_closed() -> None:
    """A dead letter's reason must be one of the documented reasons."""
    with pytest.raises(ValidationError):
        DeadLetter.model_validate(
            {"reason": "whatever", "error": "", "payload": "", "topic": "t", "partition": 0, "offset": 0}
        )
    letter = DeadLetter(
        reason=DeadLetterReason.EMPTY_TEXT, error="empty", payload="{}", topic="t", partition=0, offset=1
    )
    assert json.loads(letter.model_dump_json())["reason"] == "empty_text"


@pytest.mark.parametrize(
    "names",
    [["A"], ["A", "A"], ["A", ""], ["A", " B"], [f"L{i}" for i in range(513)]],
)
def test_taxonomy_rejects_bad_label_sets(names: list[str]) -> None:
    """A taxonomy needs at least two unique, non-empty, trimmed labels and at most 512: a ContractError (exit 4), not
    pydantic's traceback."""
    with pytest.raises(ContractError, match="are not a taxonomy"):
        Taxonomy.from_names(names)


def test_taxonomy_index() -> None:
    """Labels keep their order; an unknown label is a ContractError naming it."""
    taxonomy = Taxonomy.from_names(["B", "A"])
    assert taxonomy.index("A") == 1
    with pytest.raises(ContractError, match="'C'"):
        taxonomy.index("C")


def test_json_schema_files_are_in_sync() -> None:
    """The committed JSON Schema files equal what the models generate (run `python -m qcat.schemas.export`)."""
    for name, text in render().items():
        assert (SCHEMA_DIR / name).read_text(encoding="utf-8") == text, f"{name} is stale"
    assert {path.name for path in SCHEMA_DIR.glob("*.schema.json")} == set(render())


def test_all_is_exact() -> None:
    """`qcat.schemas.__all__` lists exactly the public names the package exports."""
    public = {name for name in vars(qcat.schemas) if not name.startswith("_")} - {
        "events",
        "export",
        "prompt",
        "taxonomy",
        "topics",
    }
    assert set(qcat.schemas.__all__) == public


def test_schemas_import_no_torch_or_faust() -> None:
    """Consumers can use the contracts without installing torch or faust."""
    code = "import sys, qcat.schemas; print(sorted(m for m in ('torch', 'faust', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
