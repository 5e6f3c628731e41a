"""The engine's PyTorch backend: a decoder with a label head as the `Scorer`, and how settings become an engine
(the base model, an adapter merged into it, or the zero-shot head). The backend named `torch` (qcat/classifier.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import structlog
import torch

from qcat.classifier import DEFAULT_TAXONOMY
from qcat.engine import Engine, EngineSpec, Scorer
from qcat.manifest import with_adapter_base
from qcat.pytorch.adapter import load_adapter
from qcat.pytorch.cuda_graphs import GraphedScorer
from qcat.pytorch.model import LoadedModel, attach_label_head, label_logits, load_configured_base, right_pad
from qcat.pytorch.packed import PackedScorer, packing_problems
from qcat.pytorch.plan import ServingPlan, pad_id, plan_passes
from qcat.pytorch.quantize import quantize_decoder
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings

log = structlog.get_logger(__name__)


class TorchScorer:
    """One forward pass of the decoder per call; only the label head's logits leave the device."""

    pads = True

    def __init__(self, base: LoadedModel, plan: ServingPlan) -> None:
        self.base = base
        self.device = plan.device
        self.pad_id = plan.pad_id
        # dynamic=True: one compiled graph serves every batch shape instead of one per (rows, width).
        self._forward = torch.compile(label_logits, dynamic=True) if plan.compile else label_logits

    @torch.inference_mode()
    def __call__(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        batch, last = right_pad(rows, self.pad_id)
        logits: torch.Tensor = self._forward(self.base.lm, batch.to(self.device), last.to(self.device))
        return logits.cpu().numpy()


def plan_for(settings: EngineSettings, base: LoadedModel, spec: EngineSpec) -> ServingPlan:
    """The serving plan for `base` (carrying its head, merged and quantized: as it will run) and `spec`."""
    weight = next(base.lm.parameters())
    return plan_passes(
        settings,
        weight.device,
        weight.dtype,
        packable=not packing_problems(base.lm),
        longest_prompt=spec.longest_prompt(base.tokenizer),
        pad_id=pad_id(base.tokenizer),
    )


def scorer_for(base: LoadedModel, plan: ServingPlan) -> Scorer:
    if plan.packed:
        return PackedScorer(base, plan)
    return GraphedScorer(base, plan) if plan.cuda_graphs else TorchScorer(base, plan)


def build_engine(base: LoadedModel, spec: EngineSpec, settings: EngineSettings | None = None) -> Engine:
    """An engine over `base.lm`, which must already carry its label head (and be as it will run), with the passes
    `settings` and the device call for (`qcat.pytorch.plan`)."""
    plan = plan_for(settings or EngineSettings(), base, spec)
    log.info("engine passes", **plan.describe())
    return Engine(
        base.tokenizer,
        spec,
        scorer_for(base, plan),
        model_name=base.name,
        batch_size=plan.batch_size,
        batch_tokens=plan.batch_tokens,
    )


def load_engine(settings: EngineSettings, base: LoadedModel | None = None, taxonomy: Taxonomy | None = None) -> Engine:
    """The engine `settings` describe; `base`, if given, is that base model already loaded (and modified here);
    `taxonomy`, if given, in place of settings.taxonomy's file."""
    base = base if base is not None else load_configured_base(with_adapter_base(settings, settings.adapter))
    if taxonomy is None and settings.taxonomy:
        taxonomy = Taxonomy.from_file(settings.taxonomy)
    if settings.adapter is not None:
        spec = EngineSpec.for_adapter(load_adapter(base, settings.adapter, taxonomy))
        log.info(
            "adapter loaded",
            adapter=spec.adapter_version,
            base_model=base.name,
            labels=len(spec.taxonomy.labels),
            review_threshold=spec.routing.review_threshold,
        )
    else:
        spec = EngineSpec.zero_shot(taxonomy or Taxonomy.from_file(DEFAULT_TAXONOMY), settings.max_question_tokens)
        attach_label_head(base, spec.taxonomy)
        log.info(
            "zero-shot: no adapter, the base model ranks the labels",
            base_model=base.name,
            labels=len(spec.taxonomy.labels),
        )
    quantize_decoder(base.lm, settings.quantize)
    return build_engine(base, spec, settings)
