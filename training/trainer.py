"""Fine-tuning: LoRA on the decoder plus the label head, through transformers' Trainer.

The loss is cross-entropy over the label head's logits on exactly the prompts the engine serves (`Engine.encode`,
`label_logits`): training and serving share one code path. Validation loss and accuracy are tracked every epoch,
early stopping on held-out accuracy keeps the best checkpoint, and every evaluation is appended to metrics.csv.

Speed: a LoRA step on a 0.6B model is bound by the host (Python and thousands of small kernel launches), not by the
GPU (profiled on an H200: the GPU was busy ~50 ms of a ~190 ms step). Hence large length-grouped batches, a fused
optimizer, no host-device synchronisation per step (`NonFiniteGuard` reads the previous step's verdict), no
per-step walks over the ~2,400 peft modules (`LabelTrainer`), and optionally decoder layers compiled one region at a
time (`compiled_layers`) and the decoder's training steps replayed as CUDA graphs (`graphed_decoder`): together they
take a batch-64 TREC-6 epoch on Qwen3-0.6B's shape from ~19 s to 2.4-2.8 s with `--autocast` (docs/training.md).
"""

from __future__ import annotations

import csv
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from peft import PeftModel
from transformers import (
    EarlyStoppingCallback,
    PreTrainedModel,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.modeling_outputs import BaseModelOutputWithPast

from qcat.engine import Engine
from qcat.errors import TrainingError
from qcat.model import label_logits, right_pad
from qcat.training.data import Example
from qcat.training.progress import RichProgress

Batching = Literal["length", "random"]
"""How training rows become batches: `length` groups similar lengths (transformers' length grouping: little
padding); `random` pads random rows to their longest (the plain recipe's order). Measured on TREC-6 with the proxy:
the same accuracy at batch 64 (docs/training.md), so `length` is the default."""


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
    """Spread this much of each training target over the other labels: a regulariser (+1.5 points on Banking77's
    77 labels with the pretrained proxy, docs/training.md)."""
    compile: bool = False
    """Compile the decoder layers (torch.compile): faster steps after a one-off compile (~100 s on an H200)."""
    cuda_graphs: bool = False
    """Replay full training batches' decoder as CUDA graphs (`graphed_decoder`): the host stops bounding a step."""
    autocast: bool = False
    """Run the decoder's and LoRA's matmuls in bf16 under torch.autocast (CUDA); LoRA's weights stay float32."""
    report_to: tuple[str, ...] = ()


class LabelDataset(torch.utils.data.Dataset[dict[str, Any]]):
    def __init__(self, engine: Engine, examples: Sequence[Example]) -> None:
        encoded = engine.encode([e.text for e in examples])
        self.rows: list[dict[str, Any]] = [
            {"input_ids": ids, "labels": engine.taxonomy.index(e.label), "index": i}
            for i, (ids, e) in enumerate(zip(encoded.ids, examples, strict=True))
        ]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def tokens(self) -> int:
        return sum(len(row["input_ids"]) for row in self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def collate(pad_id: int, width_multiple: int = 1) -> Any:
    """Batches padded as the engine pads them at serving time (`right_pad`), optionally to a multiple of
    `width_multiple` tokens (fewer distinct shapes for CUDA graphs; right padding never changes a row's logits)."""

    def collate_rows(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, last_index = right_pad([row["input_ids"] for row in rows], pad_id)
        extra = -input_ids.shape[1] % width_multiple
        if extra:
            input_ids = torch.nn.functional.pad(input_ids, (0, extra), value=pad_id)
        return {
            "input_ids": input_ids,
            "last_index": last_index,
            "labels": torch.tensor([row["labels"] for row in rows]),
            "index": torch.tensor([row["index"] for row in rows]),
        }

    return collate_rows


class NonFiniteGuard(TrainerCallback):
    """Stops training on non-finite logits, naming the inputs, without a host-device sync per step.

    Each training step records a device-side flag per row; the host reads the previous step's flags when the next
    step is already queued, and the last step's at the end of every epoch (before it is evaluated or saved), so the
    GPU never idles waiting for the check. Finite logits give a finite cross-entropy, so checking the logits covers
    the loss too.
    """

    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = examples
        self.pending: tuple[torch.Tensor, torch.Tensor, torch.cuda.Event | None] | None = None

    def watch(self, logits: torch.Tensor, index: torch.Tensor) -> None:
        self.check()
        bad, copied = ~torch.isfinite(logits.detach()).all(dim=1), None
        if bad.is_cuda:  # copy the verdict to the host asynchronously; the event marks when it has arrived
            bad, copied = bad.to("cpu", non_blocking=True), torch.cuda.Event()
            copied.record()
        self.pending = (bad, index, copied)

    def check(self) -> None:
        if self.pending is None:
            return
        bad, index, copied = self.pending
        self.pending = None
        if copied is not None:
            copied.synchronize()  # waits for that step's forward pass only, not for the work queued since
        if not bool(bad.any()):
            return
        rows = [self.examples[int(i)].source for i in index.cpu()[bad].tolist()]
        raise TrainingError(
            f"non-finite logits or loss for {len(rows)} training inputs ({rows[:5]}); the weights diverged or the "
            "inputs overflow this dtype: lower --learning-rate, or try --dtype float32"
        )

    def on_epoch_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.check()


class LabelTrainer(Trainer):
    """Trainer whose loss is cross-entropy over the label head's logits."""

    def __init__(self, *args: Any, guard: NonFiniteGuard, autocast: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.autocast = autocast
        self.parameter_count: int | None = None

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """transformers calls `model.train()` on every step: a walk over every module, ~2,400 with LoRA on all
        layers (tens of ms a step, profiled). The mode only changes around evaluation, so that call is skipped
        while the model is already training."""
        if not model.training:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train = lambda mode=True: model  # type: ignore[method-assign]  # shadows Module.train for this step
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        finally:
            del model.train

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """transformers' FLOP estimate for its logs counts the model's parameters anew on every step; once will do."""
        if self.parameter_count is None:
            self.parameter_count = super().floating_point_ops({"input_ids": torch.zeros(1)}) // 6
        return 6 * int(inputs["input_ids"].numel()) * self.parameter_count

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        lm = model.get_base_model() if isinstance(model, PeftModel) else model
        ids = inputs["input_ids"]
        # cache_enabled=False: CUDA graphs cannot capture autocast's weight cache
        with torch.autocast(ids.device.type, torch.bfloat16, enabled=self.autocast, cache_enabled=False):
            logits = label_logits(lm, ids, inputs["last_index"])
        smoothing = 0.0
        if model.training:
            self.guard.watch(logits, inputs["index"])
            smoothing = self.args.label_smoothing_factor
        loss = torch.nn.functional.cross_entropy(logits, inputs["labels"], label_smoothing=smoothing)
        return (loss, {"logits": logits}) if return_outputs else loss


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


GRAPH_WIDTH_MULTIPLE = 8
"""With CUDA graphs, batches are padded to a multiple of this many tokens: one graph per width met."""


@contextmanager
def graphed_decoder(lm: PreTrainedModel, batch_size: int, *, compiled: bool = False) -> Iterator[None]:
    """Run every full training batch's decoder forward and backward as CUDA graphs, then restore the eager decoder.

    At batch 64 the host bounds a LoRA step (profiled on an H200: the GPU busy 30 ms of a 108 ms compiled step):
    ~1,600 kernel launches and the Python between them. A CUDA graph replays a step's recorded kernels with one
    launch each way. Graphs have fixed shapes: one is captured (torch.cuda.make_graphed_callables) per batch width
    the first time it appears, widths being padded to `GRAPH_WIDTH_MULTIPLE`; the epoch's last, smaller batch and
    evaluation run eagerly. A graph replays the kernels the eager step would launch: the same arithmetic, to rounding
    (a capture may pick other GEMM algorithms). Each graph keeps its own activation memory (a few GB at batch 64 on
    Qwen3-0.6B).
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
            graphs[shape] = torch.cuda.make_graphed_callables(_LastHidden(decoder, eager, masks), (input_ids,))
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


def _when_training(compiled: Any, eager: Any) -> Any:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return compiled(*args, **kwargs) if torch.is_grad_enabled() else eager(*args, **kwargs)

    return forward


class CsvMetrics(TrainerCallback):
    """Appends every evaluation to metrics.csv, with the epoch's training time and tokens/s (evaluation excluded)."""

    COLUMNS = ("epoch", "step", "train_seconds", "train_tokens_per_s", "eval_loss", "eval_accuracy")

    def __init__(self, path: Path, tokens_per_epoch: int) -> None:
        self.path = path
        self.tokens_per_epoch = tokens_per_epoch
        self.started = 0.0
        self.seconds = float("nan")
        self.epoch_seconds: list[float] = []
        self.training = True

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        synchronize()
        self.started = time.perf_counter()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        synchronize()
        self.seconds = time.perf_counter() - self.started
        self.epoch_seconds.append(self.seconds)

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.training = False  # the evaluation after training re-scores the best epoch: not a new row

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **_: Any
    ) -> None:
        if not metrics or not self.training:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(self.COLUMNS)
            writer.writerow(
                [
                    state.epoch,
                    state.global_step,
                    round(self.seconds, 3),
                    round(self.tokens_per_epoch / self.seconds, 1),
                    metrics.get("eval_loss"),
                    metrics.get("eval_accuracy"),
                ]
            )


def check_reporters(names: Sequence[str]) -> None:
    """Fail before any model loads when a `report_to` integration is unknown or its package is missing."""
    from transformers.integrations.integration_utils import get_available_reporting_integrations

    available = set(get_available_reporting_integrations())
    for name in names:
        if name not in available:
            raise TrainingError(
                f"cannot report to {name!r}: its package is not installed (pip install {name}) "
                f"or it is not one of transformers' integrations; available here: {sorted(available) or 'none'}"
            )


def check_device(config: TrainConfig, device: torch.device) -> None:
    """Fail before any model loads when a CUDA-only option meets another device."""
    if (config.cuda_graphs or config.autocast) and device.type != "cuda":
        raise TrainingError(
            f"--cuda-graphs and --autocast need a CUDA device, and training would run on {device}: "
            "pass --device cuda on a machine with a GPU, or leave these options off"
        )


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def accuracy(prediction: Any) -> dict[str, float]:
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, axis=1) == prediction.label_ids).mean())}


def fit(
    model: PeftModel,
    engine: Engine,
    train: Sequence[Example],
    held_out: Sequence[Example],
    work: Path,
    config: TrainConfig,
) -> dict[str, float]:
    """Train `model` (already wrapping engine.base.lm) in place; the best epoch's weights are kept.

    `work` receives the checkpoints, metrics.csv and, when reporting to TensorBoard, runs/.

    Returns the final evaluation plus `train_seconds_per_epoch` and `train_tokens_per_s` (median over epochs),
    `first_epoch_seconds` (which includes compiling) and `epochs_run`.
    """
    device = next(model.parameters()).device
    check_device(config, device)
    cuda = device.type == "cuda"
    args = TrainingArguments(
        output_dir=str(work),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        label_smoothing_factor=config.label_smoothing,
        warmup_steps=config.warmup_ratio,
        train_sampling_strategy="group_by_length" if config.batching == "length" else "random",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=2,
        load_best_model_at_end=True,
        # accuracy, not loss, picks the epoch: held-out loss often rises with confidence while accuracy still
        # improves (seen on the proxy: Banking77 loss best at epoch 6, accuracy at 9); temperature scaling
        # afterwards repairs the calibration
        metric_for_best_model="eval_accuracy",
        greater_is_better=True,
        label_names=["labels"],
        remove_unused_columns=False,
        seed=config.seed,
        data_seed=config.seed,
        report_to=list(config.report_to),
        logging_strategy="epoch",
        logging_nan_inf_filter=False,  # its per-step check syncs with the GPU; NonFiniteGuard stops on NaN instead
        optim="adamw_torch_fused" if cuda else "adamw_torch",
        # accelerate copies each batch to the GPU with a blocking copy, which waits for all queued GPU work: the host
        # and GPU then take turns every step. Pinned batches copied without blocking let the host run ahead.
        accelerator_config={"non_blocking": cuda},
        use_cpu=device.type == "cpu",
        bf16=cuda,
        disable_tqdm=False,
    )
    train_set = LabelDataset(engine, train)
    timing = CsvMetrics(work / "metrics.csv", tokens_per_epoch=train_set.tokens)
    guard = NonFiniteGuard(list(train))
    trainer = LabelTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=LabelDataset(engine, held_out),
        data_collator=collate(engine.pad_id, GRAPH_WIDTH_MULTIPLE if config.cuda_graphs else 1),
        compute_metrics=accuracy,
        callbacks=[
            guard,
            EarlyStoppingCallback(early_stopping_patience=config.patience),
            timing,
            RichProgress(),
        ],
        guard=guard,
        autocast=config.autocast,
    )
    trainer.remove_callback(ProgressCallback)
    lm: PreTrainedModel = model.get_base_model()  # type: ignore[assignment]  # peft types it as Module
    with (
        compiled_layers(lm) if config.compile else nullcontext(),
        graphed_decoder(lm, config.batch_size, compiled=config.compile) if config.cuda_graphs else nullcontext(),
    ):
        trainer.train()
    result: dict[str, float] = trainer.evaluate()
    epochs = timing.epoch_seconds
    seconds = float(np.median(epochs[1:] if len(epochs) > 1 else epochs))  # the first epoch also compiles
    return result | {
        "train_seconds_per_epoch": seconds,
        "train_tokens_per_s": train_set.tokens / seconds,
        "first_epoch_seconds": epochs[0],
        "epochs_run": len(epochs),
    }
