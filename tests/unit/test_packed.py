"""Packed passes (`QCAT_PACKED`): the packing layout, the same logits as the padded pass's, passes budgeted by real
tokens, refusals where packing cannot run, and on a GPU the same scores through FlashAttention, graphs and compile."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from qcat.engine import EngineSpec
from qcat.errors import UsageError
from qcat.pytorch.adapter import new_lora
from qcat.pytorch.engine import TorchScorer, build_engine
from qcat.pytorch.model import LoadedModel, attach_label_head, private_copy
from qcat.pytorch.packed import (
    FEWEST_ROWS,
    FEWEST_TOKENS,
    LONGEST_STEP,
    PackedScorer,
    pack,
    packed_shape,
    packing_problems,
    quarter_step,
    read_decoder,
)
from qcat.pytorch.quantize import quantize_decoder
from qcat.schemas.prompt import prompt_format
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings
from tests.helpers.plans import plan

TAXONOMY = Taxonomy.from_names(["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"])
ROWS = [[5, 9, 2, 7], [3, 3], [11, 4, 8, 6, 1, 2, 9], [10]]


def test_pack_lays_prompts_end_to_end() -> None:
    packed = pack(ROWS, pad=0)
    ids, positions = packed.flat[:14], packed.flat[14:28]
    last, starts = packed.flat[28:32], packed.flat[32:]
    assert ids.tolist() == [token for row in ROWS for token in row]
    assert positions.tolist() == [0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 4, 5, 6, 0]
    assert last.tolist() == [3, 5, 12, 13]
    assert starts.tolist() == [0, 4, 6, 13, 14]
    assert (packed.tokens, packed.rows, packed.longest) == (14, 4, 7)


def test_pack_pads_to_a_shape_with_tokens_and_empty_prompts() -> None:
    packed = pack(ROWS, pad=99, tokens=20, row_slots=6)
    tokens = packed.flat[:20]
    last, starts = packed.flat[40:46], packed.flat[46:]
    assert tokens[14:].tolist() == [99] * 6
    assert last.tolist() == [3, 5, 12, 13, 0, 0]
    assert starts.tolist() == [0, 4, 6, 13, 14, 14, 14]  # padding rows are empty prompts; padding tokens in none


@pytest.mark.parametrize(
    ("tokens", "rows", "longest", "shape"),
    [
        (1, 1, 1, (FEWEST_TOKENS, FEWEST_ROWS, LONGEST_STEP)),
        (FEWEST_TOKENS + 1, FEWEST_ROWS + 1, LONGEST_STEP + 1, (640, 2 * FEWEST_ROWS, 2 * LONGEST_STEP)),
        (9000, 2, 7, (10240, FEWEST_ROWS, LONGEST_STEP)),
    ],
)
def test_packed_shape_rounds_up(tokens: int, rows: int, longest: int, shape: tuple[int, int, int]) -> None:
    assert packed_shape(tokens, rows, longest) == shape


def test_token_buckets_are_at_most_a_quarter_larger() -> None:
    assert all(n <= quarter_step(n) <= 1.25 * n for n in range(1, 40_000))
    assert len({quarter_step(n) for n in range(FEWEST_TOKENS, 32_769)}) == 25  # 4 per doubling, 512 to 32,768


def test_packed_pass_scores_as_the_padded_pass(tiny: LoadedModel) -> None:
    """The same logits, in any order and mix of lengths, to float32 rounding."""
    attach_label_head(tiny, TAXONOMY)
    packed, padded = PackedScorer(tiny, plan(tiny, packed=True)), TorchScorer(tiny, plan(tiny, packed=False))
    for rows in (ROWS, ROWS[::-1], ROWS[:1], [row * 5 for row in ROWS]):
        np.testing.assert_allclose(packed(rows), padded(rows), atol=1e-5, rtol=1e-5)


def test_a_packed_engine_budgets_passes_by_real_tokens(tiny: LoadedModel) -> None:
    attach_label_head(tiny, TAXONOMY)
    prompt = prompt_format(TAXONOMY, "compact")
    engine = build_engine(
        tiny, EngineSpec(TAXONOMY, prompt, 16), EngineSettings(batch_size=64, batch_tokens=50, packed=True)
    )
    lengths = [7, 30, 3, 12, 12, 50, 1, 9, 22, 5] * 3
    chunks = engine.chunks(lengths)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    assert all(len(chunk) == 1 or sum(lengths[i] for i in chunk) <= 50 for chunk in chunks)
    padded = build_engine(tiny, EngineSpec(TAXONOMY, prompt, 16), EngineSettings(batch_size=64, batch_tokens=50))
    assert len(chunks) < len(padded.chunks(lengths))  # padding counted there, not here


class _Quantized(torch.Tensor):
    """Stands in for torchao's float8 weight tensors, a subclass of torch.Tensor."""


def test_packing_is_refused_where_it_cannot_run(tiny: LoadedModel) -> None:
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    )
    with pytest.raises(UsageError, match="model type 'llama'"):
        read_decoder(llama)
    quantized = private_copy(tiny)
    attach_label_head(quantized, TAXONOMY)
    quantize_decoder(quantized.lm, "int8")
    with pytest.raises(UsageError, match="quantized"):
        read_decoder(quantized.lm)
    fp8_like = private_copy(tiny)  # QCAT_QUANTIZE=fp8 keeps nn.Linear, with a quantized tensor subclass as weight
    attach_label_head(fp8_like, TAXONOMY)
    projection = fp8_like.lm.get_decoder().layers[0].self_attn.q_proj  # type: ignore[operator]
    projection.weight = torch.nn.Parameter(projection.weight.detach().as_subclass(_Quantized), requires_grad=False)
    with pytest.raises(UsageError, match="quantized"):
        read_decoder(fp8_like.lm)
    if not torch.cuda.is_available():
        attach_label_head(tiny, TAXONOMY)
        with pytest.raises(UsageError, match="CUDA device"):
            PackedScorer(tiny, plan(tiny, packed=True, cuda_graphs=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlashAttention's packed kernel and graphs need a GPU")
@pytest.mark.parametrize(("compile", "graphs"), [(False, False), (False, True), (True, True)])
def test_packed_passes_on_a_gpu_score_as_padded_ones(tiny: LoadedModel, compile: bool, graphs: bool) -> None:
    """In bf16 (FlashAttention's packed kernel runs in half precision only), to bf16's rounding."""
    base = private_copy(tiny)
    base.lm.to("cuda", torch.bfloat16)  # type: ignore[arg-type]
    attach_label_head(base, TAXONOMY)
    packed = PackedScorer(base, plan(base, packed=True, compile=compile, cuda_graphs=graphs))
    padded = TorchScorer(base, plan(base, packed=False))
    if packed.graphs is not None:
        assert len(packed.graphs) == 5  # 512, 640, 768, 896 and 1,024 tokens
    for rows in (ROWS, ROWS[::-1], ROWS[:1], [row * 30 for row in ROWS]):
        np.testing.assert_allclose(packed(rows), padded(rows), atol=2e-2, rtol=2e-2)
    if packed.graphs is not None:
        assert len(packed.graphs) == 6  # the long rows (longest 210) have their own shape


def test_engines_pack_by_default_only_where_packing_runs_well(tiny: LoadedModel) -> None:
    """On a CPU the padded pass stays the default; a model whose LoRA layers are not merged (training's own engine)
    cannot run packed, since packing reads the plain weights."""
    attach_label_head(tiny, TAXONOMY)
    engine = build_engine(
        tiny, EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "compact"), 16), EngineSettings(batch_size=8)
    )
    assert isinstance(engine.scorer, TorchScorer)
    assert packing_problems(tiny.lm) == []
    new_lora(tiny, TAXONOMY)
    assert packing_problems(tiny.lm) == ["quantized linear layers (QCAT_QUANTIZE), or LoRA layers not merged"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the GPU default needs a GPU")
def test_a_gpu_engine_packs_compiles_and_graphs_by_default(tiny: LoadedModel) -> None:
    base = private_copy(tiny)
    base.lm.to("cuda", torch.bfloat16)  # type: ignore[arg-type]
    attach_label_head(base, TAXONOMY)
    prompt = prompt_format(TAXONOMY, "instruct")  # prompts longer than LONGEST_STEP tokens
    engine = build_engine(
        base,
        EngineSpec(TAXONOMY, prompt, 100),
        EngineSettings(batch_size=8, batch_tokens=1024, serving=True),
    )
    assert isinstance(engine.scorer, PackedScorer)
    assert engine.scorer.graphs is not None
    assert engine.prompt_overhead + 100 > LONGEST_STEP
    captured = len(engine.scorer.graphs)
    engine.classify(["a long question " * 40, "a short one"])
    assert len(engine.scorer.graphs) == captured  # every shape was captured when the engine loaded


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_new_engine_captures_its_graphs_while_another_serves(tiny: LoadedModel) -> None:
    """A hot swap: the loader thread captures the new engine's graphs while the inference thread scores."""
    base = private_copy(tiny)
    base.lm.to("cuda", torch.bfloat16)  # type: ignore[arg-type]
    attach_label_head(base, TAXONOMY)
    serving = PackedScorer(base, plan(base, packed=True, cuda_graphs=True, batch_tokens=512))
    expected = serving(ROWS)
    stop, results = threading.Event(), []

    def serve() -> None:
        while not stop.is_set():
            results.append(serving(ROWS))

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        loaded = PackedScorer(private_copy(base), plan(base, packed=True, cuda_graphs=True, batch_tokens=4096))
    finally:
        stop.set()
        thread.join()
    assert loaded.graphs is not None
    assert len(loaded.graphs) == 13  # 512 to 4,096 tokens, 4 sizes per doubling
    assert results
    assert all(np.array_equal(result, expected) for result in results)
    np.testing.assert_allclose(loaded(ROWS), expected, atol=1e-6)
