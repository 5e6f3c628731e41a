"""Training rows as tensors: each question encoded exactly as the engine encodes it when serving, and batches
padded as it pads them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from qcat.engine import Engine
from qcat.model import right_pad
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
    def tokens(self) -> int:
        return sum(len(row["input_ids"]) for row in self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def collate(pad_id: int, width_multiple: int = 1) -> Any:
    """Batches padded as the engine pads them at serving time (`right_pad`), optionally to a multiple of
    `width_multiple` tokens (fewer distinct shapes for CUDA graphs; right padding never changes a row's logits)."""

    def collate_rows(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, last_index = right_pad([row["input_ids"] for row in rows], pad_id)
        extra = -input_ids.shape[1] % width_multiple
        if extra:
            input_ids = torch.nn.functional.pad(input_ids, (0, extra), value=pad_id)
        return {
            "input_ids": input_ids,
            "last_index": last_index,
            "labels": torch.tensor([row["labels"] for row in rows]),
            "index": torch.tensor([row["index"] for row in rows]),
        }

    return collate_rows
