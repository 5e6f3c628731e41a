"""The engine's PyTorch backend: a decoder with a label head as the `Scorer`, and how settings become an engine
(the base model, an adapter merged into it, or the zero-shot head). The backend named `torch` (qcat/classifier.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import structlog
import torch

from qcat.adapter import load_adapter
from qcat.classifier import DEFAULT_TAXONOMY
from qcat.cuda_graphs import GraphedScorer
from qcat.engine import Engine, pad_id
from qcat.errors import UsageError
from qcat.manifest import with_adapter_base
from qcat.model import LoadedModel, attach_label_head, label_logits, load_configured_base, right_pad
from qcat.packed import PackedScorer, packs_well
from qcat.quantize import quantize_decoder
from qcat.routing import RoutingPolicy
from qcat.schemas.prompt import ZERO_SHOT_PROMPT_STYLE, PromptFormat, prompt_format
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings

log = structlog.get_logger(__name__)


def default_batch_tokens(device: torch.device) -> int:
    """Padded tokens per forward pass: a CPU is as efficient at a few hundred tokens as at thousands, and padding
    is pure waste there; a GPU needs tens of thousands to fill its matrix units."""
    return 32768 if device.type == "cuda" else 256


class TorchScorer:
    """One forward pass of the decoder per call; only the label head's logits leave the device."""

    pads = True

    def __init__(self, base: LoadedModel, *, compile: bool = False) -> None:
        self.base = base
        self.device = next(base.lm.parameters()).device
        self.pad_id = pad_id(base.tokenizer)
        # dynamic=True: one compiled graph serves every batch shape instead of one per (rows, width).
        self._forward = torch.compile(label_logits, dynamic=True) if compile else label_logits

    @torch.inference_mode()
    def __call__(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        batch, last = right_pad(rows, self.pad_id)
        logits: torch.Tensor = self._forward(self.base.lm, batch.to(self.device), last.to(self.device))
        return logits.cpu().numpy()


def torch_engine(
    base: LoadedModel,
    taxonomy: Taxonomy,
    prompt: PromptFormat,
    *,
    max_question_tokens: int,
    batch_size: int,
    batch_tokens: int | None = None,
    temperature: float = 1.0,
    adapter_version: str | None = None,
    routing: RoutingPolicy | None = None,
    compile: bool | None = False,
    cuda_graphs: bool | None = False,
    packed: bool | None = None,
) -> Engine:
    """An engine over `base.lm`, which must already carry its label head. `packed` unset: packed passes where they
    run well (`packs_well`); `compile` and `cuda_graphs` unset: on for packed passes on a GPU (docs/engine.md)."""
    device = next(base.lm.parameters()).device
    batch_tokens = batch_tokens or default_batch_tokens(device)
    packed = packs_well(base.lm) if packed is None else packed
    fastest = packed and device.type == "cuda"
    compile = fastest if compile is None else compile
    cuda_graphs = fastest if cuda_graphs is None else cuda_graphs
    scorer: TorchScorer | GraphedScorer | PackedScorer
    if packed:
        scorer = PackedScorer(base, compile=compile, graphs=cuda_graphs)
    elif compile and cuda_graphs:
        raise UsageError("QCAT_COMPILE and QCAT_CUDA_GRAPHS exclude each other unless passes are packed: set one")
    else:
        scorer = GraphedScorer(base) if cuda_graphs else TorchScorer(base, compile=compile)
    log.info("engine passes", device=str(device), packed=packed, compiled=compile, cuda_graphs=cuda_graphs)
    engine = Engine(
        base.tokenizer,
        taxonomy,
        prompt,
        scorer,
        model_name=base.name,
        max_question_tokens=max_question_tokens,
        batch_size=batch_size,
        batch_tokens=batch_tokens,
        temperature=temperature,
        adapter_version=adapter_version,
        routing=routing,
    )
    if isinstance(scorer, PackedScorer):
        scorer.prepare(batch_tokens, longest=engine.prompt_overhead + max_question_tokens)
    return engine


def load_engine(settings: EngineSettings, base: LoadedModel | None = None, taxonomy: Taxonomy | None = None) -> Engine:
    """The engine `settings` describe; `base`, if given, is that base model already loaded (and modified here);
    `taxonomy`, if given, in place of settings.taxonomy's file."""
    base = base if base is not None else load_configured_base(with_adapter_base(settings, settings.adapter))
    if taxonomy is None and settings.taxonomy:
        taxonomy = Taxonomy.from_file(settings.taxonomy)
    if settings.adapter is not None:
        manifest = load_adapter(base, settings.adapter, taxonomy)
        quantize_decoder(base.lm, settings.quantize)
        log.info(
            "adapter loaded",
            adapter=manifest.version,
            base_model=base.name,
            labels=len(manifest.taxonomy.labels),
            review_threshold=manifest.routing.review_threshold,
        )
        return torch_engine(
            base,
            manifest.taxonomy,
            prompt_format(manifest.taxonomy, manifest.prompt_style),
            max_question_tokens=manifest.max_question_tokens,
            batch_size=settings.batch_size,
            batch_tokens=settings.batch_tokens,
            compile=settings.compile,
            cuda_graphs=settings.cuda_graphs,
            packed=settings.packed,
            temperature=manifest.temperature,
            adapter_version=manifest.version,
            routing=manifest.routing,
        )
    taxonomy = taxonomy or Taxonomy.from_file(DEFAULT_TAXONOMY)
    attach_label_head(base, taxonomy)
    quantize_decoder(base.lm, settings.quantize)
    log.info(
        "zero-shot: no adapter, the base model ranks the labels", base_model=base.name, labels=len(taxonomy.labels)
    )
    return torch_engine(
        base,
        taxonomy,
        prompt_format(taxonomy, ZERO_SHOT_PROMPT_STYLE),
        max_question_tokens=settings.max_question_tokens,
        batch_size=settings.batch_size,
        batch_tokens=settings.batch_tokens,
        compile=settings.compile,
        cuda_graphs=settings.cuda_graphs,
        packed=settings.packed,
    )
