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
        """The taxonomy of these label names, in this order; names it cannot hold are a `ContractError`."""
        try:
            return cls(labels=tuple(Label(name=name) for name in names))
        except ValidationError as error:
            raise ContractError(f"labels {_shown(names)} are not a taxonomy: {_problems(error)}") from error

    @classmethod
    def from_file(cls, path: Path) -> Taxonomy:
        """Read a taxonomy file: JSON `{"labels": [{"name", "description"}]}`, or one label name per line."""
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as error:
            raise ContractError(f"cannot read the taxonomy {path}: {error.strerror or error}") from error
        if path.suffix != ".json":
            names = [line.strip() for line in text.splitlines() if line.strip()]
            try:
                return cls.from_names(names)
            except ContractError as error:
                raise ContractError(f"{path} is not a valid taxonomy: {error}") from error
        try:
            return cls.model_validate_json(text, strict=False)
        except ValidationError as error:
            raise ContractError(f"{path} is not a valid taxonomy: {_problems(error)}") from error

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ContractError(f"{name!r} is not in the taxonomy ({_shown(self.names)})") from None

    def dump(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2)


def _problems(error: ValidationError) -> str:
    return "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in error.errors()[:5])


def _shown(names: list[str] | tuple[str, ...], most: int = 10) -> str:
    listed = ", ".join(repr(name) for name in names[:most])
    return f"[{listed}{', ...' if len(names) > most else ''}] ({len(names)})"
