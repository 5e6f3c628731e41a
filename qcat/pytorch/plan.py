"""How the PyTorch backend will run its passes, decided once: a function of the settings, the device and the model.

Every speed switch has one meaning here and nowhere else: padded or packed passes, torch.compile, CUDA graphs, the
forward pass's size in questions and in tokens. Unset, each follows the device and the model (docs/engine.md): on a
GPU in half precision, a Qwen3 decoder with plain weights runs packed passes, compiled and replayed as CUDA graphs
when the process serves a stream (`EngineSettings.serving`), where their start-up cost pays off; a CPU runs padded
passes. The scorers take what the plan says in their constructors; `qcat worker --settings` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qcat.errors import UsageError
from qcat.pytorch.model import resolve_device, resolve_dtype
from qcat.settings import CPU_MAX_BATCH, GPU_MAX_BATCH, EngineSettings

CPU_BATCH_TOKENS = 256
GPU_BATCH_TOKENS = 32768
"""Padded tokens per forward pass: a CPU is as efficient at a few hundred tokens as at thousands, and padding is pure
waste there; a GPU needs tens of thousands to fill its matrix units."""


@dataclass(frozen=True)
class ServingPlan:
    device: torch.device
    dtype: torch.dtype
    packed: bool
    compile: bool
    cuda_graphs: bool
    batch_size: int
    """Most questions in one forward pass (and the micro-batch a worker takes by default)."""
    batch_tokens: int
    """Most tokens in one forward pass: padded tokens for padded passes, real ones for packed passes."""
    longest_prompt: int
    """The most tokens one prompt has: packed graphs are captured for it."""
    pad_id: int

    def describe(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "passes": "packed" if self.packed else "padded",
            "compile": self.compile,
            "cuda_graphs": self.cuda_graphs,
            "batch_size": self.batch_size,
            "batch_tokens": self.batch_tokens,
        }


def plan_passes(
    settings: EngineSettings,
    device: torch.device,
    dtype: torch.dtype,
    *,
    packable: bool,
    longest_prompt: int = 0,
    pad_id: int = 0,
) -> ServingPlan:
    """The plan for a model on `device` in `dtype`; `packable`: the model can run packed passes
    (`qcat.pytorch.packed.packing_problems` finds none)."""
    gpu = device.type == "cuda"
    half = dtype in (torch.bfloat16, torch.float16)  # in float32, packed attention runs prompt by prompt
    packed = settings.packed if settings.packed is not None else gpu and half and packable
    fastest = settings.serving and packed and gpu
    compile = fastest if settings.compile is None else settings.compile
    graphs = fastest if settings.cuda_graphs is None else settings.cuda_graphs
    if compile and graphs and not packed:
        raise UsageError("QCAT_COMPILE and QCAT_CUDA_GRAPHS exclude each other unless passes are packed: set one")
    if graphs and not gpu:
        raise UsageError(f"QCAT_CUDA_GRAPHS needs a CUDA device (here: {device}); unset it to run the passes eagerly")
    return ServingPlan(
        device=device,
        dtype=dtype,
        packed=packed,
        compile=compile,
        cuda_graphs=graphs,
        batch_size=settings.batch_size or (GPU_MAX_BATCH if gpu else CPU_MAX_BATCH),
        batch_tokens=settings.batch_tokens or (GPU_BATCH_TOKENS if gpu else CPU_BATCH_TOKENS),
        longest_prompt=longest_prompt,
        pad_id=pad_id,
    )


def pad_id(tokenizer: Any) -> int:
    """The token a batch is right-padded with (any token would do: causal attention never reads it)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad or 0)


def describe_for(settings: EngineSettings) -> dict[str, Any]:
    """The plan `settings` give on this machine for a Qwen3 decoder with plain weights, without loading it
    (`qcat worker --settings`)."""
    device = resolve_device(settings.device)
    plan = plan_passes(settings, device, resolve_dtype(settings.dtype, device), packable=settings.quantize == "none")
    micro_batch = getattr(settings, "max_batch", None) or plan.batch_size
    return {"micro_batch": micro_batch, **plan.describe()}
