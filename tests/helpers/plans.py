"""Serving plans for tests that build a scorer directly, on the model's own device and dtype."""

from __future__ import annotations

from typing import Any

from qcat.pytorch.model import LoadedModel
from qcat.pytorch.packed import LONGEST_STEP
from qcat.pytorch.plan import ServingPlan, pad_id, plan_passes
from qcat.settings import EngineSettings


def plan(base: LoadedModel, *, batch_tokens: int = 1024, longest: int = LONGEST_STEP, **settings: Any) -> ServingPlan:
    weight = next(base.lm.parameters())
    return plan_passes(
        EngineSettings(batch_tokens=batch_tokens, **settings),
        weight.device,
        weight.dtype,
        packable=True,
        longest_prompt=longest,
        pad_id=pad_id(base.tokenizer),
    )
