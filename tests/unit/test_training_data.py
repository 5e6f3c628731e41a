"""Training data: loading JSONL/CSV, the data report's errors and warnings, and the stratified split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from qcat.errors import DataError
from qcat.schemas.taxonomy import Taxonomy
from qcat.training.data import Example, load_examples, normalized, report, resolve_conflicts, stratified_split

TAXONOMY = Taxonomy.from_names(["HUM", "LOC", "NUM"])
ROOT = Path(__file__).resolve().parents[2]


def examples(*pairs: tuple[str, str]) -> list[Example]:
    return [Example(text, label, f"t:{i}") for i, (text, label) in enumerate(pairs, start=1)]


def test_loads_jsonl_and_csv(tmp_path: Path) -> None:
    """Both formats give the same examples, each with its file:line."""
    (tmp_path / "d.jsonl").write_text('{"text": "Who ?", "label": "HUM"}\n\n{"text": "Where ?", "label": "LOC"}\n')
    (tmp_path / "d.csv").write_text('text,label\nWho ?,HUM\n"Where, then ?",LOC\n')
    jsonl, rows = load_examples(tmp_path / "d.jsonl"), load_examples(tmp_path / "d.csv")
    assert [(e.text, e.label, e.source) for e in jsonl] == [
        ("Who ?", "HUM", "d.jsonl:1"),
        ("Where ?", "LOC", "d.jsonl:3"),
    ]
    assert [(e.text, e.label) for e in rows] == [("Who ?", "HUM"), ("Where, then ?", "LOC")]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.jsonl", '{"text": "a", "label": "HUM"}\n{oops\n', "d.jsonl:2: not JSON"),
        ("d.jsonl", '{"text": 3, "label": "HUM"}\n', "must both be strings"),
        ("d.csv", "question,label\nWho ?,HUM\n", "lacks ['text']"),
        ("d.txt", "Who ?\tHUM\n", "use .jsonl"),
    ],
)
def test_bad_files_fail_with_the_reason(tmp_path: Path, name: str, content: str, message: str) -> None:
    """Malformed files raise DataError naming the file, line and problem."""
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_examples(tmp_path / name)


def test_report_errors_stop_training() -> None:
    """Unknown labels, empty texts and texts with two labels are errors naming their rows."""
    data = examples(("Who ?", "HUM"), ("Where ?", "PLACE"), ("  ", "LOC"), ("who?", "NUM"))
    result = report(data, TAXONOMY)
    assert len(result.errors) == 3
    assert "t:2 ('PLACE')" in result.errors[0]
    assert "t:3" in result.errors[1]
    assert "t:1" in result.errors[2]
    assert "t:4" in result.errors[2]
    with pytest.raises(DataError, match="outside the taxonomy"):
        result.raise_on_errors()


def test_report_warnings_are_listed() -> None:
    """Duplicates, near duplicates, overlong texts, train/eval overlap, missing labels and imbalance are warnings."""
    train = examples(
        *([("Who ?", "HUM")] * 2), ("WHO  ?", "HUM"), *[(f"Where {i} ?", "LOC") for i in range(30)], ("x" * 50, "LOC")
    )
    result = report(train, TAXONOMY, eval_examples=examples(("Where 3 ?", "LOC")), max_chars=40)
    assert result.errors == []
    text = "\n".join(result.warnings)
    for expected in (
        "1 exact duplicate",
        "1 near-duplicate",
        "longer than 40",
        "1 eval rows also occur",
        "no training examples: NUM",
        "class imbalance",
    ):
        assert expected in text, expected


def test_stratified_split_is_seeded_and_keeps_shares() -> None:
    """The split keeps each label's share, repeats with its seed, and keeps singletons in training."""
    lines = (ROOT / "data" / "trec" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines[:1000]]
    data = [Example(r["text"], r["label"], f"t:{i}") for i, r in enumerate(rows)] + [Example("Lonely ?", "ZZZ", "t:x")]
    train, held = stratified_split(data, eval_fraction=0.2, seed=7)
    again, _ = stratified_split(data, eval_fraction=0.2, seed=7)
    assert [e.source for e in train] == [e.source for e in again]
    assert (len(held), len(train)) == (200, 801)
    assert "ZZZ" not in {e.label for e in held}
    whole, part = Counter(r["label"] for r in rows), Counter(e.label for e in held)
    for label, count in whole.items():
        assert abs(part[label] / 200 - count / 1000) < 0.02, label


def test_an_excel_csv_with_a_bom_and_an_empty_file_are_handled(tmp_path: Path) -> None:
    """A CSV that starts with a UTF-8 BOM (as Excel saves it) loads; an empty file is one clear error."""
    (tmp_path / "excel.csv").write_bytes("\ufefftext,label\nWho ?,HUM\n".encode())
    assert [(e.text, e.label) for e in load_examples(tmp_path / "excel.csv")] == [("Who ?", "HUM")]
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="holds no labeled rows"):
        load_examples(tmp_path / "empty.jsonl")


def test_the_split_keeps_equal_texts_on_one_side() -> None:
    """Texts equal once normalized (case, spacing, punctuation) never straddle training and held-out rows."""
    examples = [Example(f"Question {i % 60} ?", "AB"[i % 2], f"f:{i}") for i in range(240)]
    examples += [Example(f"question   {i % 60}?", "AB"[i % 2], f"g:{i}") for i in range(240)]
    train, held_out = stratified_split(examples, eval_fraction=0.2, seed=1)
    assert {normalized(e.text) for e in train}.isdisjoint({normalized(e.text) for e in held_out})
    assert len(train) + len(held_out) == len(examples)
    assert 0.1 < len(held_out) / len(examples) < 0.3


def test_conflicting_labels_stop_training_unless_a_policy_resolves_them() -> None:
    """By default a text with two labels is an error naming --conflicts; `drop` removes every such row (held-out
    rows included), `majority` keeps the label most rows carry and drops a tie."""
    train = [
        Example("Who is it ?", "HUM", "t:1"),
        Example("who is it?", "HUM", "t:2"),
        Example("Where ?", "LOC", "t:3"),
    ]
    held = [Example("Who is it ?", "ENTY", "e:1"), Example("Why ?", "DESC", "e:2"), Example("Where ?", "NUM", "e:3")]
    taxonomy = Taxonomy.from_names(["DESC", "ENTY", "HUM", "LOC", "NUM"])
    assert any("--conflicts drop" in error for error in report(train, taxonomy, eval_examples=held).errors)
    kept_train, kept_held, dropped = resolve_conflicts(train, held, "drop")
    assert [e.source for e in kept_train] == []
    assert [e.source for e in kept_held] == ["e:2"]
    assert sorted(e.source for e in dropped) == ["e:1", "e:3", "t:1", "t:2", "t:3"]
    kept_train, kept_held, dropped = resolve_conflicts(train, held, "majority")
    assert [e.source for e in kept_train] == ["t:1", "t:2"]
    assert [e.source for e in kept_held] == ["e:2"]
    assert sorted(e.source for e in dropped) == ["e:1", "e:3", "t:3"]
    assert not report(kept_train, taxonomy, eval_examples=kept_held).errors
    assert resolve_conflicts(train, held, "error") == (train, held, [])
