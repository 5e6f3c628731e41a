"""Labeled questions for training: loading (JSONL or CSV), conflicting labels, the data report, and a seeded
stratified split.

The report runs before any training: errors (unknown labels, empty texts, one text with two labels) stop the run
with the offending rows named; warnings (duplicates, overlong texts, train/eval overlap, imbalance, labels without
examples) are listed and training goes on. Texts that carry two labels stop it unless a conflict policy says what
to do with them (`resolve_conflicts`): real data has them, and a user needs a way on that does not mean editing
files.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qcat.errors import DataError
from qcat.schemas.taxonomy import Taxonomy

MAX_SHOWN = 5
IMBALANCE_RATIO = 10.0
ConflictPolicy = Literal["error", "drop", "majority"]
"""What to do with texts that carry different labels: stop (`error`), drop every such row (`drop`), or keep the
rows of the label most of them carry and drop the rest (`majority`; a tie drops them all)."""


@dataclass(frozen=True)
class Example:
    text: str
    label: str
    source: str  # "file:line", so every problem names its row


@dataclass(frozen=True)
class Scored:
    """One held-out example with the model's answer."""

    text: str
    gold: str
    predicted: str
    confidence: float
    distance: float | None = None
    """The question's open-set distance (adapters with open-set statistics)."""


def load_examples(path: Path) -> list[Example]:
    """Read `text`,`label` rows from a .jsonl or .csv file."""
    if not path.is_file():
        raise DataError(f"{path} does not exist.")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: Excel starts its CSVs with a BOM
            reader = csv.DictReader(handle)
            missing = {"text", "label"} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}: the CSV header lacks {sorted(missing)} (it needs text,label).")
            rows = [_example(row, f"{path.name}:{number}") for number, row in enumerate(reader, start=2)]
        return _not_empty(rows, path)
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: use .jsonl (one {{'text', 'label'}} object a line) or .csv with text,label.")
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path.name}:{number}: not JSON ({error.msg}).") from error
        if not isinstance(row, dict):
            raise DataError(f"{path.name}:{number}: expected an object with text and label.")
        examples.append(_example(row, f"{path.name}:{number}"))
    return _not_empty(examples, path)


def _not_empty(examples: list[Example], path: Path) -> list[Example]:
    if not examples:
        raise DataError(f"{path} holds no labeled rows (it needs text and label on every row).")
    return examples


def write_examples(examples: Sequence[Example], path: Path, *, sources: bool = False) -> Path:
    """Write `examples` as JSONL (`load_examples` reads it back): a split or merged set that later steps share;
    with `sources`, each row also names where it came from (file:line)."""
    rows = ({"text": e.text, "label": e.label} | ({"source": e.source} if sources else {}) for e in examples)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _example(row: dict[str, object], source: str) -> Example:
    text, label = row.get("text"), row.get("label")
    if not isinstance(text, str) or not isinstance(label, str):
        raise DataError(
            f"{source}: text and label must both be strings, got {type(text).__name__}/{type(label).__name__}."
        )
    return Example(text=text, label=label.strip(), source=source)


def normalized(text: str) -> str:
    """Case, spacing and punctuation removed: texts equal under this are near duplicates."""
    return re.sub(r"[^\w ]", "", " ".join(text.lower().split())).strip()


@dataclass
class DataReport:
    examples: int = 0
    per_label: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def raise_on_errors(self) -> None:
        if self.errors:
            raise DataError("The data has errors:\n- " + "\n- ".join(self.errors))


def shown(items: Sequence[str]) -> str:
    """The first few of `items` and how many more: an error line names examples, not thousands of them."""
    more = f" and {len(items) - MAX_SHOWN} more" if len(items) > MAX_SHOWN else ""
    return ", ".join(items[:MAX_SHOWN]) + more


def report(
    train: Sequence[Example], taxonomy: Taxonomy, *, eval_examples: Sequence[Example] = (), max_chars: int = 2000
) -> DataReport:
    result = DataReport(examples=len(train), per_label=dict(Counter(e.label for e in train)))
    everything = [*train, *eval_examples]
    known = set(taxonomy.names)
    unknown = [f"{e.source} ({e.label!r})" for e in everything if e.label not in known]
    if unknown:
        result.errors.append(f"{len(unknown)} rows have labels outside the taxonomy: {shown(unknown)}")
    empty = [e.source for e in everything if not e.text.strip()]
    if empty:
        result.errors.append(f"{len(empty)} rows have empty text: {shown(empty)}")
    labels_of: dict[str, set[str]] = defaultdict(set)
    sources_of: dict[str, list[str]] = defaultdict(list)
    for e in everything:
        labels_of[normalized(e.text)].add(e.label)
        sources_of[normalized(e.text)].append(e.source)
    conflicts = [f"{shown(sources_of[key])} ({sorted(labels)})" for key, labels in labels_of.items() if len(labels) > 1]
    if conflicts:
        result.errors.append(
            f"{len(conflicts)} texts carry different labels: {shown(conflicts)}; fix the data, or pass `qcat train "
            "--conflicts drop` (drop those rows) or `--conflicts majority` (keep each text's majority label)"
        )
    long_rows = [e.source for e in everything if len(e.text) > max_chars]
    if long_rows:
        result.warnings.append(f"{len(long_rows)} texts are longer than {max_chars} characters: {shown(long_rows)}")
    exact = Counter((e.text, e.label) for e in train)
    duplicates = sum(count - 1 for count in exact.values() if count > 1)
    if duplicates:
        result.warnings.append(f"{duplicates} exact duplicate rows in the training data")
    train_texts = Counter(normalized(e.text) for e in train)
    near = sum(count - 1 for count in train_texts.values() if count > 1) - duplicates
    if near > 0:
        result.warnings.append(f"{near} near-duplicate rows (equal but for case, spacing or punctuation)")
    if eval_examples:
        train_keys = {normalized(e.text) for e in train}
        overlap = [e.source for e in eval_examples if normalized(e.text) in train_keys]
        if overlap:
            result.warnings.append(f"{len(overlap)} eval rows also occur in training: {shown(overlap)}")
    counts = [result.per_label.get(name, 0) for name in taxonomy.names]
    lacking = [name for name, count in zip(taxonomy.names, counts, strict=True) if count == 0]
    if lacking:
        result.warnings.append(f"{len(lacking)} taxonomy labels have no training examples: {shown(lacking)}")
    present = [count for count in counts if count]
    if present and max(present) / min(present) > IMBALANCE_RATIO:
        result.warnings.append(
            f"class imbalance: the largest label has {max(present)} examples, the smallest {min(present)}"
        )
    return result


def resolve_conflicts(
    train: Sequence[Example], held_out: Sequence[Example], policy: ConflictPolicy
) -> tuple[list[Example], list[Example], list[Example]]:
    """Apply `policy` to texts (compared `normalized`) that carry different labels across both sets: returns the
    training rows, the held-out rows and the rows dropped. `error` drops nothing (the report then stops the run)."""
    if policy == "error":
        return list(train), list(held_out), []
    labels: dict[str, Counter[str]] = defaultdict(Counter)
    for e in [*train, *held_out]:
        labels[normalized(e.text)][e.label] += 1

    def keep(e: Example) -> bool:
        counts = labels[normalized(e.text)]
        if len(counts) == 1:
            return True
        (best, most), (_, second) = counts.most_common(2)
        return policy == "majority" and most > second and e.label == best

    dropped = [e for e in [*train, *held_out] if not keep(e)]
    return [e for e in train if keep(e)], [e for e in held_out if keep(e)], dropped


def stratified_split(
    examples: Sequence[Example], *, eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded split that keeps each label's share. Texts equal once `normalized` stay on one side (a duplicate in
    the held-out rows would measure memory, not generalisation); labels with one such text stay in training."""
    from sklearn.model_selection import train_test_split

    groups: dict[str, list[Example]] = defaultdict(list)
    for e in examples:
        groups[normalized(e.text)].append(e)
    keys = list(groups)
    label_of = {key: Counter(e.label for e in groups[key]).most_common(1)[0][0] for key in keys}
    counts = Counter(label_of.values())
    singletons = [key for key in keys if counts[label_of[key]] < 2]
    rest = [key for key in keys if counts[label_of[key]] >= 2]
    train, held_out = train_test_split(
        rest, test_size=eval_fraction, random_state=seed, stratify=[label_of[key] for key in rest]
    )
    return [e for key in [*train, *singletons] for e in groups[key]], [e for key in held_out for e in groups[key]]
