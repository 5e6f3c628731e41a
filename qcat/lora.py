"""The shape of the LoRA qcat trains: which layers, what rank. Torch-free, so the training CLI shows these defaults
without loading torch, and they are written once."""

from __future__ import annotations

from dataclasses import dataclass

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Every linear layer of a Qwen decoder block: the usual LoRA choice for classification quality."""


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 16
    alpha: int | None = None
    """LoRA's scaling numerator; None: twice the rank."""
    dropout: float = 0.05
    targets: tuple[str, ...] = LORA_TARGETS

    @property
    def scaling(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.rank


DEFAULT_LORA = LoraSpec()
