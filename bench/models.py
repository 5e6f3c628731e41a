"""Worker classifiers for benchmarks: `QCAT_CLASSIFIER=bench.models:qwen3_shape` serves the engine on a
random-weight model of Qwen3-0.6B's exact shape (speed does not depend on weight values)."""

from __future__ import annotations

import torch

from bench.engine import build_model, make_engine
from qcat.engine import Engine
from qcat.pytorch.cpu import configure_cpu
from qcat.pytorch.model import resolve_dtype
from qcat.settings import EngineSettings


def qwen3_shape(settings: EngineSettings) -> Engine:
    device = torch.device("cpu" if settings.device == "auto" else settings.device)
    if device.type == "cpu":
        configure_cpu(settings.threads, settings.keep_freed_memory)
    model, tokenizer = build_model(device, resolve_dtype(settings.dtype, device))
    return make_engine(
        model,
        tokenizer,
        "compact",
        settings.batch_tokens,
        batch_size=settings.batch_size,
        compile=settings.compile,
        cuda_graphs=settings.cuda_graphs,
        packed=settings.packed,
    )
