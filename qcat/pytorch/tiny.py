"""`tiny-qwen3`: a small random-initialised Qwen3 for tests and offline demos, built in seconds.

It has the real Qwen3 architecture (so every transformers/peft code path is exercised) but random weights:
its zero-shot answers are noise until an adapter is trained on it. Deterministic for a given corpus and seed,
so an adapter trained on it reloads onto an identical model (the fingerprint checks that).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

CORPUS = Path(__file__).parents[1] / "assets" / "tiny_corpus.txt"
EOS = "<|endoftext|>"


def fit_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE (like Qwen's) fitted on `texts`: any string encodes, frequent words become one token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS)


def tiny_config(vocab_size: int, **overrides: Any) -> Qwen3Config:
    # head_dim stays Qwen3's 128: transformers' GGUF loader does not read it from the file and assumes 128.
    shape: dict[str, Any] = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 128,
    }
    shape.update(overrides)
    return Qwen3Config(vocab_size=vocab_size, tie_word_embeddings=True, max_position_embeddings=4096, **shape)


def build_tiny_qwen3(
    texts: Iterable[str] | None = None, *, seed: int = 0
) -> tuple[Qwen3ForCausalLM, PreTrainedTokenizerFast]:
    """Fit the tokenizer on `texts` (default: the bundled question corpus) and build a seeded random Qwen3."""
    corpus = list(texts) if texts is not None else CORPUS.read_text(encoding="utf-8").splitlines()
    tokenizer = fit_tokenizer(corpus)
    config = tiny_config(len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    return model, tokenizer
