"""Fine-tuning tiny-qwen3 through the production Trainer path: it learns, beats the untrained adapter, and reloads."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import torch

from qcat.adapter import AdapterManifest, new_lora, save_adapter
from qcat.engine import Engine
from qcat.model import LoadedModel
from qcat.settings import EngineSettings
from schemas.prompt import prompt_format
from schemas.taxonomy import Taxonomy
from training.data import Example
from training.trainer import TrainConfig, fit

TAXONOMY = Taxonomy.from_names(["HUM", "LOC", "NUM"])
SUBJECTS = [
    "the president",
    "a river",
    "the moon",
    "Paris",
    "the city",
    "the war",
    "a computer",
    "the king",
    "the bridge",
    "the company",
]
TEMPLATES = {
    "HUM": ["Who invented {}?", "Who discovered {}?", "Who owns {}?", "Who named {}?"],
    "LOC": ["Where is {}?", "Where can I find {}?", "Where was {} built?", "In which country is {}?"],
    "NUM": ["How many people saw {}?", "How much does {} cost?", "How old is {}?", "How many years did {} last?"],
}


def learnable() -> tuple[list[Example], list[Example]]:
    """Questions whose category follows from their words; 3 balanced classes, so chance is 33%."""
    rows = [
        Example(t.format(s), label, f"s:{label}:{t}:{s}")
        for label, ts in TEMPLATES.items()
        for t in ts
        for s in SUBJECTS
    ]
    random.Random(0).shuffle(rows)
    return rows[:90], rows[90:]


def accuracy(engine: Engine, examples: list[Example]) -> float:
    predictions = engine.classify([e.text for e in examples])
    return sum(p.label == e.label for p, e in zip(predictions, examples, strict=True)) / len(examples)


def test_lora_learns_and_the_saved_adapter_reloads(tiny: LoadedModel, tmp_path: Path) -> None:
    """>= 90% held-out accuracy (chance 33%), far above the untrained adapter; reloaded adapter predicts the same."""
    train, held_out = learnable()
    model = new_lora(tiny, TAXONOMY, rank=8, alpha=16)
    engine = Engine(tiny, TAXONOMY, prompt_format(TAXONOMY, "compact"), max_question_tokens=32, batch_size=64)
    untrained = accuracy(engine, held_out)
    metrics = fit(
        model,
        engine,
        train,
        held_out,
        tmp_path / "work",
        TrainConfig(epochs=15, batch_size=16, learning_rate=2e-3, patience=3, seed=0),
    )
    trained = accuracy(engine, held_out)
    assert trained >= 0.9, metrics
    assert trained - untrained >= 0.4, (untrained, trained)
    assert (tmp_path / "work" / "metrics.csv").read_text().startswith("epoch,step,train_seconds,train_tokens_per_s")
    assert metrics["train_seconds_per_epoch"] > 0

    manifest = AdapterManifest(
        version="t1",
        taxonomy=TAXONOMY,
        base_model=tiny.name,
        base_fingerprint=tiny.fingerprint,
        max_question_tokens=32,
        metrics={"accuracy": trained},
    )
    directory = save_adapter(model, manifest, tmp_path / "adapter")
    reloaded = Engine.load(EngineSettings(base_model="tiny-qwen3", adapter=directory, dtype="float32", device="cpu"))
    texts = [e.text for e in held_out]
    torch.testing.assert_close(
        reloaded.logits(reloaded.encode(texts).ids), engine.logits(engine.encode(texts).ids), rtol=1e-4, atol=1e-4
    )


def test_seed_makes_training_reproducible(fresh_tiny: Callable[[], LoadedModel], tmp_path: Path) -> None:
    """The same seed gives the same adapter to the last bit; another seed gives another adapter."""
    train, held_out = learnable()
    texts = [e.text for e in held_out]

    def run(seed: int, name: str) -> torch.Tensor:
        torch.manual_seed(seed)
        base = fresh_tiny()
        model = new_lora(base, TAXONOMY, rank=8, alpha=16)
        engine = Engine(base, TAXONOMY, prompt_format(TAXONOMY, "compact"), max_question_tokens=32, batch_size=64)
        fit(model, engine, train, held_out, tmp_path / name, TrainConfig(epochs=2, batch_size=16, seed=seed))
        return engine.logits(engine.encode(texts).ids)

    first, again, other = run(1, "a"), run(1, "b"), run(2, "c")
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
