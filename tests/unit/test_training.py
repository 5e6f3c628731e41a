"""Fine-tuning tiny-qwen3 through the production Trainer path: it learns, beats the untrained adapter, and reloads."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from qcat.engine import Engine, EngineSpec
from qcat.errors import TrainingError, UsageError
from qcat.lora import LoraSpec
from qcat.manifest import AdapterManifest
from qcat.pytorch.adapter import new_lora, save_adapter
from qcat.pytorch.engine import build_engine, load_engine
from qcat.pytorch.model import LoadedModel
from qcat.pytorch.plan import pad_id
from qcat.schemas.prompt import prompt_format
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings
from qcat.training.config import Batching, TrainConfig
from qcat.training.data import Example
from qcat.training.loop import BestEpoch, fit

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
    model = new_lora(tiny, TAXONOMY, LoraSpec(rank=8, alpha=16))
    engine = build_engine(
        tiny, EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "compact"), 32), EngineSettings(batch_size=64)
    )
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
    assert "train" not in vars(model)  # the per-step shortcut around Module.train() is undone

    manifest = AdapterManifest(
        version="t1",
        taxonomy=TAXONOMY,
        base_model=tiny.name,
        base_fingerprint=tiny.fingerprint,
        max_question_tokens=32,
        metrics={"accuracy": trained},
    )
    directory = save_adapter(model, manifest, tmp_path / "adapter")
    reloaded = load_engine(EngineSettings(base_model="tiny-qwen3", adapter=directory, dtype="float32", device="cpu"))
    texts = [e.text for e in held_out]
    np.testing.assert_allclose(
        reloaded.logits(reloaded.encode(texts).ids), engine.logits(engine.encode(texts).ids), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("batching", ["length", "random"])
def test_seed_makes_training_reproducible(
    fresh_tiny: Callable[[], LoadedModel], tmp_path: Path, batching: Batching
) -> None:
    """The same seed gives the same adapter to the last bit; another seed gives another adapter (every batching)."""
    train, held_out = learnable()
    texts = [e.text for e in held_out]

    def run(seed: int, name: str) -> torch.Tensor:
        torch.manual_seed(seed)
        base = fresh_tiny()
        model = new_lora(base, TAXONOMY, LoraSpec(rank=8, alpha=16))
        engine = build_engine(
            base, EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "compact"), 32), EngineSettings(batch_size=64)
        )
        config = TrainConfig(epochs=2, batch_size=16, seed=seed, batching=batching)
        fit(model, engine, train, held_out, tmp_path / name, config)
        return torch.from_numpy(engine.logits(engine.encode(texts).ids))

    first, again, other = run(1, "a"), run(1, "b"), run(2, "c")
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_every_training_step_runs_the_model_in_training_mode(tiny: LoadedModel, tmp_path: Path) -> None:
    """from_pretrained leaves the modules in eval mode while peft's wrapper says it trains; the first epoch must
    still train with dropout on and reach `graphed_decoder` (which only graphs training calls)."""
    train, held_out = learnable()
    tiny.lm.eval()  # as from_pretrained leaves it
    model = new_lora(tiny, TAXONOMY, LoraSpec(rank=4, alpha=8))
    engine = build_engine(
        tiny, EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "compact"), 32), EngineSettings(batch_size=64)
    )
    modes: list[bool] = []
    decoder = tiny.lm.get_decoder()
    hook = decoder.register_forward_pre_hook(
        lambda module, _: modes.append(module.training) if torch.is_grad_enabled() else None
    )
    try:
        fit(model, engine, train, held_out, tmp_path / "work", TrainConfig(epochs=1, batch_size=16))
    finally:
        hook.remove()
    assert modes
    assert all(modes), f"{modes.count(False)} of {len(modes)} training steps ran in eval mode"


def test_non_finite_logits_stop_training_naming_the_inputs(
    fresh_tiny: Callable[[], LoadedModel], tmp_path: Path
) -> None:
    """A NaN embedding row poisons exactly the questions that contain its token; the error names those rows."""
    base = fresh_tiny()
    train, held_out = learnable()
    engine = build_engine(
        base, EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "compact"), 32), EngineSettings(batch_size=64)
    )
    (token,) = base.tokenizer(" river", add_special_tokens=False)["input_ids"]
    model = new_lora(base, TAXONOMY, LoraSpec(rank=8, alpha=16))
    with torch.no_grad():
        base.lm.get_input_embeddings().weight[token] = float("nan")
    with pytest.raises(TrainingError, match="non-finite logits") as caught:
        fit(model, engine, train, held_out, tmp_path / "work", TrainConfig(epochs=1, batch_size=16))
    named = [e.source for e in train if e.source in str(caught.value)]
    assert named, caught.value
    assert all("a river" in source for source in named), caught.value


def test_compiled_layers_train_like_eager_and_are_undone(fresh_tiny: Callable[[], LoadedModel], tmp_path: Path) -> None:
    """torch.compile'd decoder layers (the CUDA default, forced here on the CPU) learn the same as eager layers,
    and afterwards every layer has its eager forward and no input hook is left behind."""
    train, held_out = learnable()

    def run(compile_layers: bool) -> tuple[dict[str, float], LoadedModel]:
        torch.manual_seed(0)
        base = fresh_tiny()
        model = new_lora(base, TAXONOMY, LoraSpec(rank=8, alpha=16))
        engine = build_engine(
            base, EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "compact"), 32), EngineSettings(batch_size=64)
        )
        config = TrainConfig(epochs=2, batch_size=16, learning_rate=2e-3, compile=compile_layers)
        return fit(model, engine, train, held_out, tmp_path / str(compile_layers), config), base

    (eager, _), (compiled, base) = run(False), run(True)
    assert compiled["eval_loss"] == pytest.approx(eager["eval_loss"], rel=0.02), (eager, compiled)
    assert compiled["epochs_run"] == 2
    for layer in base.lm.get_decoder().layers:
        assert "forward" not in vars(layer)
    assert not getattr(base.lm, "_require_grads_hooks", None)


def test_label_smoothing_shapes_the_training_loss_only(tiny: LoadedModel, tmp_path: Path) -> None:
    """Training steps use the smoothed cross-entropy; evaluation reports the plain one, comparable across settings."""
    from transformers import TrainingArguments

    from qcat.training.batches import LabelDataset, collate
    from qcat.training.loop import LabelTrainer, NonFiniteGuard

    train, _ = learnable()
    model = new_lora(tiny, TAXONOMY, LoraSpec(rank=4, alpha=8))
    engine = build_engine(
        tiny, EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "compact"), 32), EngineSettings(batch_size=64)
    )
    dataset = LabelDataset(engine, train[:8])
    inputs = collate(pad_id(engine.tokenizer))([dataset[i] for i in range(len(dataset))])
    guard = NonFiniteGuard(train[:8])
    args = TrainingArguments(output_dir=str(tmp_path), label_smoothing_factor=0.2, use_cpu=True, report_to=[])
    trainer = LabelTrainer(model=model, args=args, guard=guard)
    cross_entropy = torch.nn.functional.cross_entropy
    for training, smoothing in ((True, 0.2), (False, 0.0)):
        model.train(training)
        with torch.no_grad():
            loss, outputs = trainer.compute_loss(model, inputs, return_outputs=True)
        expected = cross_entropy(outputs["logits"], inputs["labels"], label_smoothing=smoothing)
        assert float(loss) == pytest.approx(float(expected)), (training, smoothing)
        assert float(loss) != pytest.approx(
            float(cross_entropy(outputs["logits"], inputs["labels"], label_smoothing=0.2 - smoothing))
        )


def test_batches_padded_to_a_chosen_width_score_the_same(tiny: LoadedModel) -> None:
    """CUDA graphs pad batches to a few widths (fewer shapes); right padding must not change any row's logits."""
    from qcat.pytorch.model import attach_label_head, label_logits
    from qcat.training.batches import LabelDataset, collate

    train, _ = learnable()
    attach_label_head(tiny, TAXONOMY)
    engine = build_engine(
        tiny, EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "compact"), 32), EngineSettings(batch_size=64)
    )
    dataset = LabelDataset(engine, train[:8])
    rows = [dataset[i] for i in range(len(dataset))]
    exact = collate(pad_id(engine.tokenizer))(rows)
    width = exact["input_ids"].shape[1]
    padded = collate(pad_id(engine.tokenizer), (width - 1, width + 5, width + 9))(rows)
    assert padded["input_ids"].shape[1] == width + 5  # the narrowest width that holds the batch
    assert (
        collate(pad_id(engine.tokenizer), (width - 1,))(rows)["input_ids"].shape[1] == width
    )  # none holds it: unchanged
    assert torch.equal(padded["last_index"], exact["last_index"])
    with torch.no_grad():
        scores = [label_logits(tiny.lm, batch["input_ids"], batch["last_index"]) for batch in (exact, padded)]
    torch.testing.assert_close(scores[1], scores[0])


def test_padded_widths_pad_the_fewest_tokens() -> None:
    """The widths are multiples of 8, the widest holds the longest row, and no other choice of as many widths pads
    fewer tokens (checked against every choice on random length distributions)."""
    import itertools
    import random

    from qcat.training.batches import padded_widths

    def padded(lengths: list[int], widths: tuple[int, ...]) -> int:
        return sum(next(w for w in widths if w >= n) for n in lengths)

    generator = random.Random(0)
    for _ in range(20):
        lengths = [generator.choice((5, 9, 17, 18, 30, 41, 64, 70)) for _ in range(generator.randint(1, 200))]
        for count in (1, 2, 3):
            widths = padded_widths(lengths, count)
            assert len(widths) == min(count, len({-(-n // 8) * 8 for n in lengths}))
            assert all(w % 8 == 0 for w in widths)
            assert widths[-1] >= max(lengths)
            candidates = range(8, 73, 8)
            best = min(
                padded(lengths, c)
                for k in range(1, count + 1)
                for c in itertools.combinations(candidates, k)
                if c[-1] >= max(lengths)
            )
            assert padded(lengths, widths) == best, (lengths, count, widths)


def test_graphed_decoder_captures_full_training_batches_once_per_width(
    tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Which calls `graphed_decoder` sends to a graph (full batches, training, with gradients: one capture per
    width) and which stay eager; afterwards the decoder's own forward is back. CPU stand-in for the capture: the
    CUDA test below checks the graphs' gradients."""
    from qcat.pytorch.model import label_logits
    from qcat.training.graphs import graphed_decoder

    captured: list[tuple[int, ...]] = []

    def capture(module: torch.nn.Module, sample_args: tuple[torch.Tensor, ...]) -> torch.nn.Module:
        captured.append(tuple(sample_args[0].shape))
        return module

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", capture)
    model = new_lora(tiny, TAXONOMY, LoraSpec(rank=4, alpha=8))
    lm = model.get_base_model()
    model.train()
    ids = torch.randint(5, 100, (4, 24))
    last = torch.full((4,), 7)
    with graphed_decoder(lm, batch_size=4):
        eager = label_logits(lm, ids[:, :16], last)
        for width in (16, 24, 16):
            logits = label_logits(lm, ids[:, :width], last)
        label_logits(lm, ids[:3, :16], last[:3])  # the epoch's last, smaller batch
        with torch.no_grad():
            label_logits(lm, ids[:, :8], last)  # evaluation
        model.eval()
        label_logits(lm, ids[:, :8], last)
    assert captured == [(4, 16), (4, 24)]
    assert "forward" not in vars(lm.get_decoder())
    assert logits.shape == eager.shape == (4, 3)


def test_compiled_cuda_graphs_refuse_attention_masks_they_cannot_capture(tiny: LoadedModel) -> None:
    """With SDPA and full attention the graphed decoder states causal attention itself; other attention would
    build masks inside the capture and recompile the compiled layers there, so that combination stops early."""
    from qcat.pytorch.cuda_graphs import causal_masks
    from qcat.training.graphs import graphed_decoder

    decoder = tiny.lm.get_decoder()
    assert causal_masks(decoder) == {"full_attention": None}
    tiny.lm.set_attn_implementation("eager")
    assert causal_masks(decoder) is None
    with pytest.raises(TrainingError, match="drop --compile"), graphed_decoder(tiny.lm, 4, compiled=True):
        pass
    with graphed_decoder(tiny.lm, 4):  # uncompiled, the masks are captured as they come
        pass
    assert "forward" not in vars(decoder)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("autocast", [False, True])
def test_cuda_graphs_give_the_eager_gradients(
    fresh_tiny: Callable[[], LoadedModel], monkeypatch: pytest.MonkeyPatch, autocast: bool
) -> None:
    """Captured once, replayed on new inputs: every LoRA and head gradient is the eager step's, to within a small
    fraction of how much two batches' gradients differ (what a stale or missing replay would be off by); the GPU's
    kernels round differently inside a capture, so not to the bit."""
    from qcat.pytorch.model import label_logits
    from qcat.training.graphs import graphed_decoder

    captures: list[int] = []
    make_graphed = torch.cuda.make_graphed_callables

    def counting(*args: object, **kwargs: object) -> object:
        captures.append(1)
        return make_graphed(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", counting)
    base = fresh_tiny()
    base.lm.to("cuda")  # type: ignore[arg-type]
    model = new_lora(base, TAXONOMY, LoraSpec(rank=4, alpha=8, dropout=0.0))
    model.train()
    lm = model.get_base_model()
    trainable = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randint(5, 500, (4, 16), generator=generator), torch.randint(0, 16, (4,), generator=generator))
        for _ in range(3)
    ]

    def gradients(ids: torch.Tensor, last: torch.Tensor) -> list[torch.Tensor]:
        for parameter in trainable:
            parameter.grad = None
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast, cache_enabled=False):
            logits = label_logits(lm, ids.cuda(), last.cuda())
        torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0], device="cuda")).backward()
        return [parameter.grad.clone() for parameter in trainable]  # type: ignore[union-attr]

    eager = [gradients(*batch) for batch in batches]
    with graphed_decoder(lm, batch_size=4):
        graphed = [gradients(*batch) for batch in batches]
    assert captures == [1]

    def distance(one: list[torch.Tensor], other: list[torch.Tensor]) -> float:
        return float(torch.stack([(a - b).norm() for a, b in zip(one, other, strict=True)]).norm())

    between_batches = min(distance(eager[0], eager[1]), distance(eager[1], eager[2]))
    for expected, got in zip(eager, graphed, strict=True):
        assert distance(expected, got) <= 0.02 * between_batches, (distance(expected, got), between_batches)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_and_autocast_learn(fresh_tiny: Callable[[], LoadedModel], tmp_path: Path) -> None:
    """`fit` with CUDA graphs and autocast reaches the eager learning bar (>= 90%, chance 33%)."""
    train, held_out = learnable()
    torch.manual_seed(0)
    base = fresh_tiny()
    base.lm.to("cuda")  # type: ignore[arg-type]
    model = new_lora(base, TAXONOMY, LoraSpec(rank=8, alpha=16))
    engine = build_engine(
        base, EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "compact"), 32), EngineSettings(batch_size=64)
    )
    config = TrainConfig(epochs=8, batch_size=16, learning_rate=2e-3, patience=8, cuda_graphs=True, autocast=True)
    result = fit(model, engine, train, held_out, tmp_path, config)
    assert result["eval_accuracy"] >= 0.9, result
    assert accuracy(engine, held_out) >= 0.9


def test_cuda_graphs_and_autocast_refuse_a_cpu(tiny: LoadedModel, tmp_path: Path) -> None:
    train, held_out = learnable()
    model = new_lora(tiny, TAXONOMY, LoraSpec(rank=4, alpha=8))
    engine = build_engine(
        tiny, EngineSpec(TAXONOMY, prompt_format(TAXONOMY, "compact"), 32), EngineSettings(batch_size=64)
    )
    for config in (TrainConfig(cuda_graphs=True), TrainConfig(autocast=True)):
        with pytest.raises(UsageError, match="need a CUDA device"):
            fit(model, engine, train, held_out, tmp_path, config)
    assert not (tmp_path / "metrics.csv").exists()


def test_speed_switches_left_unset_take_the_device_s_defaults() -> None:
    """Unset, the speed switches are off on a CPU and on with CUDA (graphs and autocast; compiling stays off);
    whatever the user sets wins either way."""
    unset = TrainConfig()
    assert (unset.compile, unset.cuda_graphs, unset.autocast) == (None, None, None)
    cpu = unset.on(torch.device("cpu"))
    assert (cpu.compile, cpu.cuda_graphs, cpu.autocast) == (False, False, False)
    cuda = unset.on(torch.device("cuda"))
    assert (cuda.compile, cuda.cuda_graphs, cuda.autocast) == (False, True, True)
    forced = TrainConfig(compile=True, cuda_graphs=False).on(torch.device("cuda"))
    assert (forced.compile, forced.cuda_graphs, forced.autocast) == (True, False, True)


def test_best_epoch_restores_the_best_weights_and_stops_after_patience() -> None:
    """The best held-out epoch's trainable weights come back at the end; frozen ones are not copied; training stops
    once `patience` evaluations in a row fail to beat it (a tie does not count as better)."""
    from transformers import TrainerControl

    model = torch.nn.Linear(2, 2)
    model.bias.requires_grad_(False)
    best, control = BestEpoch(patience=2), TrainerControl()
    kept = None
    for epoch, accuracy in enumerate([0.5, 0.7, 0.7, 0.6]):
        with torch.no_grad():
            model.weight.fill_(epoch)
        best.on_evaluate(None, None, control, metrics={"eval_accuracy": accuracy}, model=model)
        kept = model.weight.detach().clone() if accuracy == 0.7 and kept is None else kept
        assert control.should_training_stop == (epoch == 3)
    best.on_train_end(None, None, control, model=model)
    assert kept is not None
    assert torch.equal(model.weight, kept)
    assert best.metrics["eval_accuracy"] == 0.7
    assert set(best.weights) == {"weight"}
