"""Quantized serving (qcat/pytorch/quantize.py) on the tiny Qwen3: the engine's guarantees hold under int8 on the CPU, a
precision the device cannot run is refused with a usage error, and fp8 where a Hopper GPU is present."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qcat.errors import InferenceError, UsageError
from qcat.pytorch.model import HEAD, LoadedModel
from qcat.pytorch.quantize import INT8_KEPT, quantize_decoder
from tests.unit.test_engine import QUESTIONS, TAXONOMY, zero_shot

# int8 activations take one scale per forward pass (fbgemm's dynamic quantization scales the whole input), so a
# question's scores move slightly with its batch-mates; float runs agree to 1e-5 (test_engine.py)
BATCH_TOLERANCE = 5e-3


def int8_linears(lm: nn.Module) -> int:
    return sum(type(module).__name__ == "Linear" and "quantized" in type(module).__module__ for module in lm.modules())


def test_int8_keeps_labels_batch_invariance_and_a_float32_head(tiny: LoadedModel) -> None:
    """Every decoder linear but the MLPs' output projections becomes int8, those keep the model's dtype; the head
    stays float32; scores stay close to float and to themselves alone or batched; labels do not change on these
    questions."""
    engine = zero_shot(tiny, batch_size=3)
    reference = engine.classify(QUESTIONS)
    dtype = next(tiny.lm.parameters()).dtype
    names = [name for name, module in tiny.lm.get_decoder().named_modules() if isinstance(module, nn.Linear)]
    kept = [name for name in names if name.endswith(INT8_KEPT)]
    quantize_decoder(tiny.lm, "int8")
    assert int8_linears(tiny.lm) == len(names) - len(kept) > 0
    decoder = tiny.lm.get_decoder()
    assert kept
    assert all(decoder.get_submodule(f"{name}.linear").weight.dtype == dtype for name in kept)
    assert getattr(tiny.lm, HEAD).weight.dtype == torch.float32
    batched = engine.classify(QUESTIONS)
    for question, plain, together in zip(QUESTIONS, reference, batched, strict=True):
        (alone,) = engine.classify([question])
        assert alone.label == together.label == plain.label
        for label in TAXONOMY.names:
            assert alone.probabilities[label] == pytest.approx(together.probabilities[label], abs=BATCH_TOLERANCE)
            assert together.probabilities[label] == pytest.approx(plain.probabilities[label], abs=BATCH_TOLERANCE)


def test_int8_keeps_the_finite_logits_guard(tiny: LoadedModel) -> None:
    """A NaN in the head still raises InferenceError naming the rows, never a label."""
    engine = zero_shot(tiny)
    quantize_decoder(tiny.lm, "int8")
    with torch.no_grad():
        getattr(tiny.lm, HEAD).weight[1, 0] = float("nan")
    with pytest.raises(InferenceError, match="non-finite") as caught:
        engine.classify(QUESTIONS[:2])
    assert caught.value.bad_indices == (0, 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_fp8_without_a_float8_gpu_is_a_usage_error(tiny: LoadedModel) -> None:
    with pytest.raises(UsageError, match="fp8 needs a GPU with float8 tensor cores"):
        quantize_decoder(tiny.lm, "fp8")


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9), reason="needs float8 tensor cores"
)
def test_fp8_on_a_gpu_keeps_labels_and_batch_invariance(tiny: LoadedModel) -> None:
    """fp8 scales each row's activations on its own, so batch-mates do not move a question's scores."""
    pytest.importorskip("torchao")
    tiny.lm.to(device="cuda", dtype=torch.bfloat16)
    engine = zero_shot(tiny, batch_size=3)
    reference = engine.classify(QUESTIONS)
    with pytest.raises(UsageError, match="int8 runs on CPUs"):
        quantize_decoder(tiny.lm, "int8")
    quantize_decoder(tiny.lm, "fp8")
    batched = engine.classify(QUESTIONS)
    for question, plain, together in zip(QUESTIONS, reference, batched, strict=True):
        (alone,) = engine.classify([question])
        assert alone.label == together.label
        for label in TAXONOMY.names:
            assert alone.probabilities[label] == pytest.approx(together.probabilities[label], abs=1e-3)
            assert together.probabilities[label] == pytest.approx(plain.probabilities[label], abs=0.05)
