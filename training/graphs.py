"""Faster training steps on a GPU: decoder layers compiled one region at a time, and whole decoder steps replayed
as CUDA graphs. Both are context managers around `fit`'s training that give the model back unchanged."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast

from qcat.errors import TrainingError
from qcat.pytorch.cuda_graphs import causal_masks

log = structlog.get_logger(__name__)


@contextmanager
def compiled_layers(lm: PreTrainedModel) -> Iterator[None]:
    """Compile every decoder layer for the training steps, then give the layers back their eager forward.

    Regional compilation: all layers share one compiled graph (same code, same shapes), so compiling costs one
    layer's time, not the whole model's; `dynamic=True` serves every batch length without recompiling. Only
    gradient-enabled calls use it: evaluation (a few batches per epoch) stays eager rather than paying two more
    compilations for no-grad variants. The embeddings' output is made to require grad so that every layer, the
    first included, sees the same input kind and the one graph serves them all.
    """
    layers: list[torch.nn.Module] = list(lm.get_decoder().layers)
    lm.enable_input_require_grads()
    for layer in layers:
        eager, compiled = layer.forward, torch.compile(layer.forward, dynamic=True)
        layer.forward = _when_training(compiled, eager)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # the instance attribute goes; the class's eager forward shows again
        lm.disable_input_require_grads()


@contextmanager
def graphed_decoder(lm: PreTrainedModel, batch_size: int, *, compiled: bool = False) -> Iterator[None]:
    """Run every full training batch's decoder forward and backward as CUDA graphs, then restore the eager decoder.

    At small batches the host bounds a LoRA step: a thousand-odd kernel launches and the Python between them
    (docs/training.md has the profile). A CUDA graph replays a step's recorded kernels with one launch each way.
    Graphs have fixed shapes: one is captured (torch.cuda.make_graphed_callables) per batch width the first time it
    appears, batches being padded to a few widths (`padded_widths`); the epoch's last, smaller batch and evaluation run
    eagerly. A graph replays the kernels the eager step would launch: the same arithmetic, to rounding
    (a capture may pick other GEMM algorithms). Each graph keeps its own activation memory.
    """
    decoder: torch.nn.Module = lm.get_decoder()
    masks = causal_masks(decoder)
    if compiled and masks is None:
        config = getattr(decoder, "config", None)
        kinds = sorted(set(getattr(config, "layer_types", None) or ()))
        raise TrainingError(
            "--cuda-graphs with --compile needs SDPA attention and full attention in every layer (this model has "
            f"{getattr(config, '_attn_implementation', None)!r}, {kinds}): "
            "its masks would recompile the layers inside the capture; drop --compile"
        )
    eager = decoder.forward
    graphs: dict[tuple[int, ...], Any] = {}

    def forward(*, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        if not (torch.is_grad_enabled() and decoder.training and input_ids.shape[0] == batch_size):
            return eager(input_ids=input_ids, **kwargs)
        shape = tuple(input_ids.shape)
        if shape not in graphs:
            started = time.perf_counter()
            graphs[shape] = torch.cuda.make_graphed_callables(_LastHidden(decoder, eager, masks), (input_ids,))
            log.info("captured a CUDA graph", width=shape[1], seconds=round(time.perf_counter() - started, 2))
        return BaseModelOutputWithPast(last_hidden_state=graphs[shape](input_ids))

    decoder.forward = forward
    try:
        with warnings.catch_warnings():
            # make_graphed_callables warms up on a side stream; the later steps' gradients then reach the
            # parameters from the default stream, which autograd handles with a stream sync and warns about
            warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match")
            yield
    finally:
        del decoder.forward  # the class's eager forward shows again


class _LastHidden(torch.nn.Module):
    """The decoder as a module of one tensor in, one out: what make_graphed_callables captures (the decoder's
    parameters, LoRA's among them, become the graph's inputs, so their gradients come out of its backward)."""

    def __init__(self, decoder: torch.nn.Module, eager: Any, masks: dict[str, None] | None) -> None:
        super().__init__()
        self.decoder = decoder
        self.eager = eager
        self.masks = masks  # `causal_masks`

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        output = self.eager(input_ids=input_ids, attention_mask=self.masks, use_cache=False)
        hidden: torch.Tensor = output.last_hidden_state
        return hidden


def _when_training(compiled: Any, eager: Any) -> Any:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return compiled(*args, **kwargs) if torch.is_grad_enabled() else eager(*args, **kwargs)

    return forward
