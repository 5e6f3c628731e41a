"""The label set a deployment routes on: the one list both training and serving index into."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from qcat.errors import ContractError

MAX_LABELS = 512
"""Each label becomes a routing topic and a row of the classification head; beyond this it is a mistake."""
MAX_LABEL_CHARS = 128


class Label(BaseModel):
    """One category: its name (what consumers see) and a description (what the zero-shot prompt shows)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=MAX_LABEL_CHARS)
    description: str = Field(default="", max_length=1000)

    @field_validator("name")
    @classmethod
    def _no_surrounding_space(cls, name: str) -> str:
        if name != name.strip() or not name.strip():
            raise ValueError(f"label name {name!r} is empty or has surrounding whitespace")
        return name


class Taxonomy(BaseModel):
    """An ordered, unique, non-empty list of labels; the order fixes each label's index in the model head."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    labels: tuple[Label, ...] = Field(min_length=2, max_length=MAX_LABELS)

    @field_validator("labels")
    @classmethod
    def _unique(cls, labels: tuple[Label, ...]) -> tuple[Label, ...]:
        counts = Counter(label.name for label in labels)
        dupes = sorted(name for name, count in counts.items() if count > 1)
        if dupes:
            raise ValueError(f"duplicate label names: {dupes}")
        return labels

    @classmethod
    def from_names(cls, names: list[str] | tuple[str, ...]) -> Taxonomy:
        return cls(labels=tuple(Label(name=name) for name in names))

    @classmethod
    def from_file(cls, path: Path) -> Taxonomy:
        """Read a taxonomy file: JSON `{"labels": [{"name", "description"}]}`, or one label name per line."""
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as error:
            raise ContractError(f"cannot read the taxonomy {path}: {error.strerror or error}") from error
        try:
            if path.suffix == ".json":
                return cls.model_validate_json(text, strict=False)
            return cls.from_names([line.strip() for line in text.splitlines() if line.strip()])
        except ValidationError as error:
            problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in error.errors()[:5])
            raise ContractError(f"{path} is not a valid taxonomy: {problems}") from error

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not in the taxonomy ({len(self.labels)} labels)") from None

    def dump(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2)
