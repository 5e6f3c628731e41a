"""Serving forward passes replayed as CUDA graphs (`QCAT_CUDA_GRAPHS`): the engine's `Scorer` on a GPU, without the
host's cost per pass.

Why: an eager pass of a small decoder costs a fixed stretch of host time, hundreds of kernel launches from
transformers' Python, whatever its size (docs/engine.md has the H200's profile). The engine therefore packs a
micro-batch into as few passes as it can, each padded to its longest question. A graph replays a pass's recorded
kernels with one launch, so passes become cheap, and a micro-batch can run as several passes of similar lengths
with little padding (`QCAT_BATCH_SIZE` questions each).

`Graphs` keeps one graph per shape of a pass; packed passes (qcat/pytorch/packed.py) use it too. Here, for padded
passes, a pass is padded to a multiple of `ROW_STEP` rows and `WIDTH_STEP` tokens (rows of padding only, read by
nobody), and a shape is captured the first time it is met. The graphs share one memory pool: they replay one at a
time on one stream, and each pass's logits are copied out before the next replays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import structlog
import torch

from qcat.errors import UsageError
from qcat.pytorch.model import LoadedModel, label_logits, right_pad
from qcat.pytorch.plan import ServingPlan

log = structlog.get_logger(__name__)

ROW_STEP = 32
WIDTH_STEP = 8


def padded_shape(rows: int, width: int) -> tuple[int, int]:
    """The graph shape a pass of `rows` questions of at most `width` tokens runs in."""
    return -(-rows // ROW_STEP) * ROW_STEP, -(-width // WIDTH_STEP) * WIDTH_STEP


def causal_masks(decoder: torch.nn.Module) -> dict[str, None] | None:
    """The decoder's attention masks when plain causal attention is exact, else None (let transformers build them).

    Rows are right-padded, so causal attention needs no mask (`label_logits`). Said explicitly for CUDA graphs:
    while a stream captures, transformers cannot inspect the inputs and builds a mask tensor instead, which costs
    SDPA's fused causal kernels and makes compiled layers recompile inside the capture (which fails).
    """
    config = getattr(decoder, "config", None)
    sdpa = getattr(config, "_attn_implementation", None) == "sdpa"
    return (
        {"full_attention": None}
        if sdpa and set(getattr(config, "layer_types", None) or ()) == {"full_attention"}
        else None
    )


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor
    output: torch.Tensor


class Graphs:
    """One CUDA graph per shape of a pass, all in one memory pool: a pass's inputs travel as one flat int64 tensor,
    copied into the graph's own before it replays. Each output must be read before the next pass replays, since
    the graphs share their memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._pool = torch.cuda.graph_pool_handle()
        self._graphs: dict[Hashable, _Graph] = {}

    def __len__(self) -> int:
        return len(self._graphs)

    def run(self, key: Hashable, inputs: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`forward(inputs)` from the graph captured for `key` (captured now, the first time the key is met)."""
        graph = self._graphs.get(key) or self._capture(key, inputs, forward)
        graph.inputs.copy_(inputs, non_blocking=True)
        graph.graph.replay()
        return graph.output

    def _capture(self, key: Hashable, example: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]) -> _Graph:
        started = time.perf_counter()
        inputs = example.to(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # cuBLAS chooses its kernels, and torch.compile compiles, outside the capture
            for _ in range(2):
                forward(inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a hot swap captures the new engine's graphs in the loader thread while the inference thread
        # keeps serving; in the default ("global") mode any CUDA call of another thread during a capture fails
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            output = forward(inputs)
        captured = self._graphs[key] = _Graph(graph, inputs, output)
        log.info("captured a CUDA graph", shape=key, seconds=round(time.perf_counter() - started, 2))
        return captured


def require_cuda(device: torch.device, what: str) -> None:
    if device.type != "cuda":
        raise UsageError(f"QCAT_CUDA_GRAPHS needs a CUDA device (here: {device}); unset it to run {what} eagerly")


class GraphedScorer:
    """`TorchScorer`'s forward pass, replayed from a CUDA graph per padded shape."""

    pads = True

    def __init__(self, base: LoadedModel, plan: ServingPlan) -> None:
        self.base = base
        self.device = plan.device
        require_cuda(self.device, "the passes")
        self.masks = causal_masks(base.lm.get_decoder())
        if self.masks is None:
            raise UsageError(
                "QCAT_CUDA_GRAPHS needs a decoder with SDPA causal attention in every layer; unset it to run the "
                "passes eagerly"
            )
        self.pad_id = plan.pad_id
        self.graphs = Graphs(self.device)

    @torch.inference_mode()
    def __call__(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        shape = padded_shape(len(rows), max(len(row) for row in rows))
        batch, last = right_pad(rows, self.pad_id, shape)
        inputs = torch.cat([batch.flatten(), last])
        logits = self.graphs.run(shape, inputs, lambda flat: self._forward(flat, shape))
        return logits[: len(rows)].cpu().numpy()

    def _forward(self, flat: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        rows, width = shape
        input_ids, last_index = flat[: rows * width].view(rows, width), flat[rows * width :]
        return label_logits(self.base.lm, input_ids, last_index, attention_mask=self.masks)
