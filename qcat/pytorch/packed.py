"""Packed serving passes (`QCAT_PACKED`): a micro-batch's prompts laid end to end through a Qwen3 decoder, with no
padding, as the engine's `Scorer` on a GPU.

Why: on a GPU an eager pass over right-padded rows spends most of its time in elementwise kernels between the
matmuls, and pads short prompts to many more tokens than they have (docs/engine.md has the profile). This pass
computes the same logits with less of both:
- tokens are packed into one sequence; attention stays within each prompt (FlashAttention's variable-length kernel on
  CUDA in bf16 or fp16, one causal attention per prompt otherwise), so no token is spent on padding;
- the q/k/v projections are one matmul, and so are the MLP's gate and up projections;
- the elementwise steps between matmuls are plain functions that `torch.compile` fuses (`compile=True`), one
  compilation shared by all layers, since weights are their arguments;
- the last layer's output projection and MLP, and the final norm, run only for the tokens the label head reads.

It reads the weights of a loaded (and adapter-merged) transformers model once, when the scorer is built, and keeps no
second copy of the large ones except the concatenated projections: a model changed afterwards needs a new engine
(every caller builds its engine after the last change; an unmerged LoRA model is refused, `packing_problems`).

With `graphs=True` (`QCAT_CUDA_GRAPHS`) passes replay as CUDA graphs, one per shape (`packed_shape`). There are few
shapes, so all are captured when the engine loads rather than while events wait (`PackedScorer`): a token
count is rounded up by at most a quarter; the prompts' slots, and the bound on a prompt's tokens, are rounded up far
more (the bound to the longest prompt the engine makes), since empty slots and a longer bound cost FlashAttention
almost nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from qcat.errors import UsageError
from qcat.pytorch.cuda_graphs import Graphs, require_cuda
from qcat.pytorch.model import HEAD, LoadedModel
from qcat.pytorch.plan import ServingPlan

SUPPORTED_MODEL_TYPES = ("qwen3",)
FEWEST_TOKENS = 512
FEWEST_ROWS = 512
LONGEST_STEP = 128  # FlashAttention's tile of queries


@dataclass(frozen=True)
class Layer:
    """One decoder layer's weights, as the packed pass uses them."""

    input_norm: torch.Tensor
    qkv: torch.Tensor
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    out: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


@dataclass(frozen=True)
class Decoder:
    """A Qwen3 decoder's weights and shape, read from a transformers model."""

    embed: torch.Tensor
    layers: list[Layer]
    norm: torch.Tensor
    head: nn.Module
    """The label head (float32; an `OpenSetHead` adds the open-set distance as one more column)."""
    rotary: nn.Module
    heads: int
    kv_heads: int
    head_dim: int
    eps: float


def packing_problems(lm: nn.Module) -> list[str]:
    """Why `lm` cannot run packed passes (nothing: it can)."""
    config: Any = getattr(lm, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return [f"model type {model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"]
    problems = [] if hasattr(lm, HEAD) else ["no label head yet"]
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"activation {config.hidden_act!r}")
    if getattr(config, "attention_bias", False):
        problems.append("attention biases")
    if set(getattr(config, "layer_types", None) or ["full_attention"]) != {"full_attention"}:
        problems.append("sliding-window layers")
    # fp8 (torchao) keeps nn.Linear and swaps its weight for a quantized tensor subclass: plain weights only
    if not all(type(module) is nn.Linear and type(module.weight.data) is torch.Tensor for module in _linears(lm)):
        problems.append("quantized linear layers (QCAT_QUANTIZE), or LoRA layers not merged")
    return problems


def read_decoder(lm: nn.Module) -> Decoder:
    """The packed pass's view of `lm`, or a UsageError saying why this model cannot run packed."""
    problems = packing_problems(lm)
    if problems:
        raise UsageError(f"QCAT_PACKED cannot run this model: {'; '.join(problems)}; set QCAT_PACKED=false")
    config: Any = lm.config
    decoder: Any = lm.get_decoder()  # type: ignore[operator]
    with torch.no_grad():  # plain tensors, not parameters: torch.compile would trace autograd around them
        layers = [_layer(block) for block in decoder.layers]
        return Decoder(
            embed=decoder.embed_tokens.weight.detach(),
            layers=layers,
            norm=decoder.norm.weight.detach(),
            head=getattr(lm, HEAD),
            rotary=decoder.rotary_emb,
            heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
            eps=config.rms_norm_eps,
        )


def _layer(block: Any) -> Layer:
    attention, mlp = block.self_attn, block.mlp
    return Layer(
        input_norm=block.input_layernorm.weight.detach(),
        qkv=torch.cat([attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]),
        q_norm=attention.q_norm.weight.detach(),
        k_norm=attention.k_norm.weight.detach(),
        out=attention.o_proj.weight.detach(),
        post_norm=block.post_attention_layernorm.weight.detach(),
        gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
        down=mlp.down_proj.weight.detach(),
    )


def _linears(lm: nn.Module) -> list[nn.Module]:
    decoder: Any = lm.get_decoder()  # type: ignore[operator]
    return [module for block in decoder.layers for module in block.modules() if "Linear" in type(module).__name__]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3's RMSNorm, step for step (float32 inside, the weight applied in the input's dtype)."""
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, as transformers applies it (rotate_half)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def attention_inputs(
    h: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    input_norm: torch.Tensor,
    qkv: torch.Tensor,
    q_norm: torch.Tensor,
    k_norm: torch.Tensor,
    heads: int,
    kv_heads: int,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Norm, the q/k/v projection, q/k norms and rotary: everything a layer does before attention."""
    tokens, head_dim = h.shape[0], q_norm.shape[0]
    q, k, v = functional.linear(rms_norm(h, input_norm, eps), qkv).split(
        [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1
    )
    q = rotate(rms_norm(q.view(tokens, heads, head_dim), q_norm, eps), cos, sin)
    k = rotate(rms_norm(k.view(tokens, kv_heads, head_dim), k_norm, eps), cos, sin)
    return q, k, v.view(tokens, kv_heads, head_dim)


def after_attention(
    h: torch.Tensor,
    attended: torch.Tensor,
    out: torch.Tensor,
    post_norm: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """The output projection, the residual, the norm and the MLP: everything a layer does after attention."""
    h = h + functional.linear(attended.flatten(1), out)
    gate, up = functional.linear(rms_norm(h, post_norm, eps), gate_up).chunk(2, dim=-1)
    return h + functional.linear(functional.silu(gate) * up, down)


def packed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, starts: torch.Tensor, longest: int, scale: float
) -> torch.Tensor:
    """Causal attention within each prompt of a packed sequence; `starts` holds each prompt's first token index and
    the end (int32, as FlashAttention reads it), `longest` bounds a prompt's tokens."""
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        attended: torch.Tensor = torch.ops.aten._flash_attention_forward(
            q, k, v, starts, starts, longest, longest, 0.0, True, False, scale=scale
        )[0]
        return attended
    attended = torch.zeros_like(q)
    bounds = starts.tolist()
    for start, end in itertools.pairwise(bounds):
        if end > start:
            attended[start:end] = functional.scaled_dot_product_attention(
                q[start:end].transpose(0, 1),
                k[start:end].transpose(0, 1),
                v[start:end].transpose(0, 1),
                is_causal=True,
                scale=scale,
                enable_gqa=True,
            ).transpose(0, 1)
    return attended


@dataclass(frozen=True)
class Packed:
    """A pass's inputs as one int64 host array, so they reach the device in one copy: token ids, positions, the
    index of each prompt's last token, and the prompts' start offsets (the last entry is the end)."""

    flat: np.ndarray
    tokens: int
    rows: int
    longest: int


def pack(rows: Sequence[Sequence[int]], pad: int, tokens: int | None = None, row_slots: int | None = None) -> Packed:
    """Prompts end to end; `tokens` and `row_slots`, if given, pad the pass to that shape (padding tokens belong to
    no prompt, padding rows are empty prompts read at index 0; nothing real reads either)."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    ends = np.cumsum(lengths)
    real = int(ends[-1])
    tokens, row_slots = tokens or real, row_slots or len(rows)
    flat = np.zeros(2 * tokens + 2 * row_slots + 1, dtype=np.int64)
    ids, positions = flat[:tokens], flat[tokens : 2 * tokens]
    last, starts = flat[2 * tokens : 2 * tokens + row_slots], flat[2 * tokens + row_slots :]
    ids[:real] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=real)
    ids[real:] = pad
    positions[:real] = np.arange(real) - np.repeat(ends - lengths, lengths)
    last[: len(rows)] = ends - 1
    starts[1 : len(rows) + 1] = ends
    starts[len(rows) + 1 :] = real
    return Packed(flat, tokens, row_slots, int(lengths.max()))


class PackedPass:
    """The packed forward pass over one decoder: device inputs in, float32 label logits (one row per slot) out."""

    def __init__(self, decoder: Decoder, *, compile: bool = False) -> None:
        self.decoder = decoder
        self.scale = decoder.head_dim**-0.5
        # dynamic=True: one compilation for every pass size; the weights are arguments, so all layers share it
        self._before = torch.compile(attention_inputs, dynamic=True) if compile else attention_inputs
        self._after = torch.compile(after_attention, dynamic=True) if compile else after_attention

    def __call__(self, flat: torch.Tensor, tokens: int, rows: int, longest: int) -> torch.Tensor:
        d = self.decoder
        ids, positions = flat[:tokens], flat[tokens : 2 * tokens]
        last, starts = flat[2 * tokens : 2 * tokens + rows], flat[2 * tokens + rows :].int()
        h = functional.embedding(ids, d.embed)
        cos, sin = (part[0, :, None, :] for part in d.rotary(h, positions[None]))
        for index, layer in enumerate(d.layers):
            q, k, v = self._before(
                h, cos, sin, layer.input_norm, layer.qkv, layer.q_norm, layer.k_norm, d.heads, d.kv_heads, d.eps
            )
            attended = packed_attention(q, k, v, starts, longest, self.scale)
            if index == len(d.layers) - 1:  # only the tokens the head reads go on
                h, attended = h[last], attended[last]
            h = self._after(h, attended, layer.out, layer.post_norm, layer.gate_up, layer.down, d.eps)
        logits: torch.Tensor = d.head(rms_norm(h, d.norm, d.eps).float())
        return logits


def packed_shape(tokens: int, rows: int, longest: int) -> tuple[int, int, int]:
    """The graph a pass of `rows` prompts, `tokens` in all and at most `longest` each, replays in."""
    return (
        quarter_step(max(tokens, FEWEST_TOKENS)),
        max(FEWEST_ROWS, 1 << (rows - 1).bit_length()),
        -(-longest // LONGEST_STEP) * LONGEST_STEP,
    )


def quarter_step(n: int) -> int:
    """`n` rounded up to a quarter of its power of two: 4 sizes per doubling, at most 25% larger."""
    step = 1 << max(0, n.bit_length() - 3)
    return -(-n // step) * step


class PackedScorer:
    """The engine's `Scorer` over packed passes: eager, compiled, or replayed as CUDA graphs, as `plan` says. It
    compiles and captures when it is built (when the engine loads) rather than on the first events: every graph shape
    of passes up to the plan's token budget, for prompts up to its longest prompt."""

    pads = False

    def __init__(self, base: LoadedModel, plan: ServingPlan) -> None:
        self.base = base
        self.device = plan.device
        if plan.cuda_graphs:
            require_cuda(self.device, "the packed passes")
        self.pad_id = plan.pad_id
        self.forward = PackedPass(read_decoder(base.lm), compile=plan.compile)
        self.graphs = Graphs(self.device) if plan.cuda_graphs else None
        self.longest = max(LONGEST_STEP, plan.longest_prompt)  # the bound on a prompt's tokens every graph is for
        if plan.compile and self.graphs is None:  # one row is a case of its own for the compiler
            self([[self.pad_id]])
            self([[self.pad_id]] * 2)
        tokens = FEWEST_TOKENS
        while self.graphs is not None and tokens <= plan.batch_tokens:
            self([[self.pad_id] * LONGEST_STEP] * (tokens // LONGEST_STEP))
            tokens = quarter_step(tokens + 1)

    @torch.inference_mode()
    def __call__(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        if self.graphs is None:
            packed = pack(rows, self.pad_id)
            flat = torch.from_numpy(packed.flat).to(self.device)
            return self.forward(flat, packed.tokens, packed.rows, packed.longest).cpu().numpy()
        longest = max(self.longest, *map(len, rows))
        tokens, slots, longest = shape = packed_shape(sum(map(len, rows)), len(rows), longest)
        inputs = torch.from_numpy(pack(rows, self.pad_id, tokens, slots).flat)
        logits = self.graphs.run(shape, inputs, lambda flat: self.forward(flat, tokens, slots, longest))
        return logits[: len(rows)].cpu().numpy()
