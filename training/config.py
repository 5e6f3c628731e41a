"""What a training run is asked to do: the recipe's numbers and switches, each default written once here.
Torch-free, so the training CLI shows these defaults without loading torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from qcat.errors import UsageError

if TYPE_CHECKING:
    import torch

Batching = Literal["length", "random"]
"""How training rows become batches: `length` groups similar lengths (transformers' length grouping: little
padding); `random` pads random rows to their longest (the plain recipe's order). Both reach the same accuracy
(docs/training.md), so `length` is the default."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 2e-4
    patience: int = 2
    seed: int = 0
    warmup_ratio: float = 0.06
    batching: Batching = "length"
    label_smoothing: float = 0.1
    """Spread this much of each training target over the other labels: a regulariser (docs/training.md)."""
    compile: bool = False
    """Compile the decoder layers (torch.compile): faster steps after a one-off compile."""
    cuda_graphs: bool = False
    """Replay full training batches' decoder as CUDA graphs (`graphed_decoder`): the host stops bounding a step."""
    autocast: bool = False
    """Run the decoder's and LoRA's matmuls in bf16 under torch.autocast (CUDA); LoRA's weights stay float32."""
    report_to: tuple[str, ...] = ()


def check_device(config: TrainConfig, device: torch.device) -> None:
    """Fail before any model loads when a CUDA-only option meets another device."""
    if (config.cuda_graphs or config.autocast) and device.type != "cuda":
        raise UsageError(
            f"--cuda-graphs and --autocast need a CUDA device, and training would run on {device}: "
            "pass --device cuda on a machine with a GPU, or leave these options off"
        )
