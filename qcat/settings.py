"""Engine settings, read once from `QCAT_*` environment variables and CLI flags, then passed down frozen."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from qcat.schemas.prompt import MAX_QUESTION_TOKENS

DEFAULT_BASE_MODEL = "Qwen/Qwen3-0.6B"
Quantize = Literal["none", "int8", "fp8"]  # serving precisions: qcat/quantize.py


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
    adapter: Path | None = Field(default=None, description="Adapter directory; None runs the base model zero-shot.")
    taxonomy: Path | None = Field(default=None, description="Labels for zero-shot; default: TREC's 6 coarse classes.")
    device: str = Field(default="auto", description="auto (cuda if present), cpu, cuda, cuda:1, ...")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="auto: bfloat16 on GPUs and CPUs with bf16 instructions, else float32."
    )
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads on CPU.")
    keep_freed_memory: bool = Field(
        default=True,
        description="On CPU (glibc): reuse freed memory instead of returning it to the OS after each batch "
        "(faster batches; the process keeps its peak memory). See qcat/cpu.py and docs/engine.md.",
    )
    max_question_tokens: int = Field(
        default=MAX_QUESTION_TOKENS, ge=4, le=4096, description="Longer questions are truncated."
    )
    batch_size: int = Field(default=64, ge=1, le=4096, description="Largest forward pass, in questions.")
    compile: bool | None = Field(
        default=False,
        description="torch.compile the forward pass (unset: on for packed passes on a GPU, as in the worker).",
    )
    cuda_graphs: bool | None = Field(
        default=False,
        description="Replay the forward passes as CUDA graphs (unset: on for packed passes on a GPU, as in the "
        "worker). With compile only when packed.",
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
