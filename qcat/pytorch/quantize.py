"""Opt-in serving precisions (`QCAT_QUANTIZE`): fewer bytes and cheaper products in the decoder's linear layers.

`int8` (CPUs): torch's dynamic quantization, int8 weights (one scale per output row) and per-call int8 activations on
fbgemm's VNNI kernels; the rest of the decoder computes in float32, which those kernels take. The MLP's output
projections (`INT8_KEPT`) stay in the model's own dtype: their inputs, the gated SiLU activations, hold a few values
far larger than the rest, and one int8 scale for a whole call leaves the rest no resolution. `fp8` (Hopper and later
GPUs): torchao's float8 weights and dynamically scaled float8 activations, one scale per row, on the GPU's float8
tensor cores. Both are applied after the adapter is merged, so the LoRA update is quantized with the weight it
belongs to, and neither touches the label head: it is tiny, and its float32 logits are what calibration and the
review threshold read.
Both are off by default: docs/engine.md has what they gain and what they cost in accuracy.
"""

from __future__ import annotations

import warnings

import structlog
import torch
from torch import nn

from qcat.errors import UnavailableError, UsageError
from qcat.settings import Quantize

FP8_CAPABILITY = (8, 9)  # Ada and Hopper: the first GPUs with float8 tensor cores
INT8_KEPT = ("down_proj",)
"""Linear layers that int8 leaves unquantized (by name suffix); docs/engine.md has what quantizing them cost."""

log = structlog.get_logger(__name__)


def quantize_decoder(lm: nn.Module, kind: Quantize) -> None:
    """Quantize the linear layers of `lm`'s decoder in place; the label head and embeddings stay as they are."""
    if kind == "none":
        return
    decoder: nn.Module = lm.get_decoder()  # type: ignore[operator]
    device = next(decoder.parameters()).device
    if kind == "int8":
        if device.type != "cpu":
            raise UsageError(f"QCAT_QUANTIZE=int8 runs on CPUs (fbgemm kernels), not on {device}; use fp8 on a GPU.")
        _int8(decoder)
        log.warning("int8 may cost accuracy (docs/engine.md): measure it on your data with `qcat eval --quantize int8`")
    elif kind == "fp8":
        _float8(decoder, device)
    else:
        raise UsageError(f"unknown QCAT_QUANTIZE {kind!r}: none, int8 or fp8")
    log.info("decoder quantized", quantize=kind, device=str(device))


def _int8(decoder: nn.Module) -> None:
    dtype = next(decoder.parameters()).dtype
    linears = {name: module for name, module in decoder.named_modules() if isinstance(module, nn.Linear)}
    kept = [name for name in linears if name.endswith(INT8_KEPT)]
    decoder.float()  # fbgemm's dynamic int8 layers take float32 activations
    for name in kept:
        parent, _, child = name.rpartition(".")
        decoder.get_submodule(parent).register_module(child, _InOwnDtype(linears[name].to(dtype)))
    config = torch.ao.quantization.per_channel_dynamic_qconfig
    with warnings.catch_warnings():  # torch deprecates its quantized tensors; docs/engine.md says what that means
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated")
        torch.ao.quantization.quantize_dynamic(
            decoder, {name: config for name in linears if name not in kept}, dtype=torch.qint8, inplace=True
        )


class _InOwnDtype(nn.Module):
    """A linear layer left in the model's dtype inside an int8 decoder, whose activations flow in float32."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.linear(hidden.to(self.linear.weight.dtype))
        return output.float()


def _float8(decoder: nn.Module, device: torch.device) -> None:
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < FP8_CAPABILITY:
        raise UsageError(
            f"QCAT_QUANTIZE=fp8 needs a GPU with float8 tensor cores (Ada, Hopper or later), not {device}; "
            "use int8 on a CPU."
        )
    try:
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            quantize_,
        )
    except ImportError as error:
        raise UnavailableError(f"QCAT_QUANTIZE=fp8 needs torchao: pip install 'qcat[fp8]' ({error})") from error
    quantize_(decoder, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
