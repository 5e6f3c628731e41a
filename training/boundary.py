"""The open-set statistics of a freshly trained adapter (`qcat.pytorch.open_set`): fitted on its training
questions' features, then each held-out question's distance, which the routing policy's boundary is chosen on.

Fitted on the training rows, never on the held-out ones: the boundary is then chosen on questions the statistics have
not seen, as serving will meet them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import structlog
import torch
from torch import nn

from qcat.engine import Engine
from qcat.pytorch.open_set import Distance, OpenSetStats, question_features
from qcat.pytorch.plan import pad_id
from qcat.training.data import Example
from qcat.training.progress import counting

log = structlog.get_logger(__name__)


def features(lm: nn.Module, engine: Engine, examples: Sequence[Example]) -> torch.Tensor:
    encoded = engine.encode([e.text for e in examples])
    with counting(f"features of {len(examples)} questions", len(examples)) as advance:
        out = question_features(lm, encoded.ids, pad_id(engine.tokenizer), engine.chunks(list(map(len, encoded.ids))))
        advance(len(examples))
    return out


def open_set_statistics(
    lm: nn.Module, engine: Engine, train: Sequence[Example], held_out: Sequence[Example]
) -> tuple[OpenSetStats, np.ndarray]:
    """The statistics of the labels' training questions, and each held-out question's distance under them."""
    labels = torch.tensor([engine.taxonomy.index(e.label) for e in train])
    stats = OpenSetStats.fit(features(lm, engine, train), labels, len(engine.taxonomy.labels))
    with torch.inference_mode():
        distances = Distance(stats)(features(lm, engine, held_out)).numpy()
    log.info("open-set statistics fitted", train=len(train), median_held_out_distance=float(np.median(distances)))
    return stats, distances
