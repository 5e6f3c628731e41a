"""Training rows as tensors: each question encoded exactly as the engine encodes it when serving, and batches
padded as it pads them."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from qcat.engine import Engine
from qcat.pytorch.model import right_pad
from qcat.training.data import Example


class LabelDataset(torch.utils.data.Dataset[dict[str, Any]]):
    def __init__(self, engine: Engine, examples: Sequence[Example]) -> None:
        encoded = engine.encode([e.text for e in examples])
        self.rows: list[dict[str, Any]] = [
            {"input_ids": ids, "labels": engine.taxonomy.index(e.label), "index": i}
            for i, (ids, e) in enumerate(zip(encoded.ids, examples, strict=True))
        ]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def lengths(self) -> list[int]:
        return [len(row["input_ids"]) for row in self.rows]

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


WIDTH_MULTIPLE = 8
"""Padded widths are multiples of this many tokens (tensor cores like aligned shapes)."""


def padded_widths(lengths: Sequence[int], count: int) -> tuple[int, ...]:
    """The `count` batch widths (multiples of `WIDTH_MULTIPLE`, the widest fitting the longest row) that pad
    `lengths` with the fewest tokens when each row is padded to the narrowest width that holds it.

    CUDA graphs capture one graph per width: each costs a capture and its own activation memory, while padding costs
    every later step; a few widths chosen from the data's own lengths keep both small. Searched exhaustively: the
    rounded lengths take a few dozen values.
    """
    rows = Counter(-(-n // WIDTH_MULTIPLE) * WIDTH_MULTIPLE for n in lengths)
    values = sorted(rows)
    if count >= len(values):
        return tuple(values)

    def padded_tokens(widths: tuple[int, ...]) -> int:
        return sum(n * next(w for w in widths if w >= value) for value, n in rows.items())

    narrower = itertools.combinations(values[:-1], count - 1)
    return min(((*chosen, values[-1]) for chosen in narrower), key=padded_tokens)


def collate(pad_id: int, widths: Sequence[int] = ()) -> Any:
    """Batches padded as the engine pads them at serving time (`right_pad`), then, when `widths` are given, to the
    narrowest that holds the batch (fewer distinct shapes for CUDA graphs; right padding never changes a row's
    logits). A batch wider than all of them keeps its width."""

    narrowest_first = sorted(widths)

    def collate_rows(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, last_index = right_pad([row["input_ids"] for row in rows], pad_id)
        width = input_ids.shape[1]
        extra = next((w for w in narrowest_first if w >= width), width) - width
        if extra:
            input_ids = torch.nn.functional.pad(input_ids, (0, extra), value=pad_id)
        return {
            "input_ids": input_ids,
            "last_index": last_index,
            "labels": torch.tensor([row["labels"] for row in rows]),
            "index": torch.tensor([row["index"] for row in rows]),
        }

    return collate_rows
