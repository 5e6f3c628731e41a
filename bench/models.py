"""Worker classifiers for benchmarks: `QCAT_CLASSIFIER=bench.models:qwen3_shape` serves the engine on a
random-weight model of Qwen3-0.6B's exact shape (speed does not depend on weight values)."""

from __future__ import annotations

import torch

from bench.engine import TAXONOMY, build_model
from qcat.engine import Engine
from qcat.model import LoadedModel, attach_label_head, fingerprint, resolve_dtype
from qcat.settings import EngineSettings
from schemas.prompt import prompt_format


def qwen3_shape(settings: EngineSettings) -> Engine:
    device = torch.device("cpu" if settings.device == "auto" else settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model, tokenizer = build_model(device, resolve_dtype(settings.dtype, device))
    base = LoadedModel(model, tokenizer, "random-qwen3-0.6b-shape", fingerprint(model), offline_builtin=True)
    attach_label_head(base, TAXONOMY)
    return Engine(
        base,
        TAXONOMY,
        prompt_format(TAXONOMY, "compact"),
        max_question_tokens=64,
        batch_size=settings.batch_size,
        batch_tokens=settings.batch_tokens,
    )
