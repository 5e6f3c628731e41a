"""Engine settings, read once from `QCAT_*` environment variables and CLI flags, then passed down frozen."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from qcat.schemas.prompt import MAX_QUESTION_TOKENS

DEFAULT_BASE_MODEL = "Qwen/Qwen3-0.6B"
TINY_NAME = "tiny-qwen3"
"""The built-in random-weight Qwen3 (qcat/pytorch/tiny.py), for tests and offline demos."""
Quantize = Literal["none", "int8", "fp8"]  # serving precisions: qcat/pytorch/quantize.py
CPU_MAX_BATCH = 64
GPU_MAX_BATCH = 512
"""Questions per micro-batch (and forward pass) when QCAT_MAX_BATCH and QCAT_BATCH_SIZE are unset: a GPU needs
hundreds of questions per pass to be used well (docs/worker.md, "On a GPU"); a CPU gains nothing past 64, and a
larger micro-batch there only waits longer."""


class EngineSettings(BaseSettings):
    """What model to run and how. `base_model` is a hub id, a local directory, a `.gguf` file or `tiny-qwen3`."""

    model_config = SettingsConfigDict(env_prefix="QCAT_", frozen=True, extra="ignore")

    def engine_settings(self) -> EngineSettings:
        """Just the engine's part (subclasses add their own settings)."""
        return EngineSettings.model_validate(self.model_dump(include=set(EngineSettings.model_fields)))

    classifier: str = Field(
        default="torch",
        description="The backend that classifies: torch, constant, a name a package declares, or module:factory.",
    )
    base_model: str = Field(
        default=DEFAULT_BASE_MODEL,
        description="Hub id, local directory, .gguf file or tiny-qwen3; default: the adapter's own, else this.",
    )
    adapter: Path | None = Field(
        default=None, description="Adapter directory; default: the registry's current version (QCAT_REGISTRY)."
    )
    registry: str | None = Field(
        default=None,
        description="Adapter registry (a directory, or an fsspec URL such as s3://bucket/qcat): its current version is "
        "served unless QCAT_ADAPTER is set; the worker resolves announced versions in it.",
    )
    zero_shot: bool = Field(
        default=False,
        description="Serve the base model zero-shot when no adapter is given, even though QCAT_REGISTRY is set but "
        "missing or has no promoted version (otherwise an error: a misspelt path must not serve the base model).",
    )
    taxonomy: Path | None = Field(default=None, description="Labels for zero-shot; default: TREC's 6 coarse classes.")
    device: str = Field(default="auto", description="auto (cuda if present), cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="auto: bfloat16 on GPUs and CPUs with bf16 instructions, else float32."
    )
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads on CPU.")
    keep_freed_memory: bool = Field(
        default=True,
        description="On CPU (glibc): reuse freed memory instead of returning it to the OS after each batch "
        "(faster batches; the process keeps its peak memory). See qcat/pytorch/cpu.py and docs/engine.md.",
    )
    max_question_tokens: int = Field(
        default=MAX_QUESTION_TOKENS, ge=4, le=4096, description="Longer questions are truncated."
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description=f"Largest forward pass, in questions (unset: the micro-batch; {GPU_MAX_BATCH} on a GPU, "
        f"{CPU_MAX_BATCH} on a CPU).",
    )
    serving: bool = Field(
        default=False,
        description="A long-running server (`qcat worker` sets it): where unset, compile and CUDA graphs are on for "
        "packed passes on a GPU, since their start-up cost pays off over a stream and not over one command.",
    )
    compile: bool | None = Field(
        default=None, description="torch.compile the forward pass (unset: on when serving packed passes on a GPU)."
    )
    cuda_graphs: bool | None = Field(
        default=None,
        description="Replay the forward passes as CUDA graphs (unset: on when serving packed passes on a GPU). With "
        "compile only when packed.",
    )
    packed: bool | None = Field(
        default=None,
        description="Run each forward pass over the prompts packed end to end, without padding (Qwen3 decoders; "
        "unset: where the model allows it, on a GPU in bf16 or fp16).",
    )
    quantize: Quantize = Field(
        default="none", description="Serving precision of the decoder: none, int8 (CPUs) or fp8 (Hopper GPUs)."
    )
    batch_tokens: int | None = Field(
        default=None, ge=16, description="Largest forward pass, in padded tokens (default: 256 on CPU, 32768 on GPU)."
    )
