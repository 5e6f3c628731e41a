"""The training loop: transformers' Trainer with qcat's loss (cross-entropy over the label head, on exactly the
prompts the engine serves), early stopping on held-out accuracy, a non-finite guard that never stalls the GPU, and
per-epoch timings in metrics.csv. The recipe is `training.config`; faster steps, `training.graphs`.

On a GPU a LoRA step on a 0.6B model is bound by the host (Python and thousands of small kernel launches), not by
the GPU; hence length-grouped batches, a fused optimizer, no host-device synchronisation per step, no per-step
walks over peft's modules, and, optionally, compiled layers and CUDA graphs (docs/training.md has the profiles).
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from transformers import (
    PreTrainedModel,
    ProgressCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from qcat.engine import Engine
from qcat.errors import TrainingError, UsageError
from qcat.pytorch.model import HEAD, head_logits, label_features
from qcat.pytorch.plan import pad_id
from qcat.training.batches import LabelDataset, collate, padded_widths
from qcat.training.config import TrainConfig, check_device
from qcat.training.data import Example
from qcat.training.graphs import compiled_layers, graphed_decoder
from qcat.training.progress import RichProgress


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


class BestEpoch(TrainerCallback):
    """Keeps the trainable weights (LoRA and head) of the epoch with the best held-out accuracy in device memory, and
    stops after `patience` epochs without a better one. The Trainer's own way, a checkpoint on disk per epoch and a
    reload at the end, spends seconds per run writing what a few megabytes of device memory hold."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.metrics: dict[str, float] = {}
        self.weights: dict[str, torch.Tensor] = {}
        self.waited = 0

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        if not metrics:
            return
        if self.metrics and metrics["eval_accuracy"] <= self.metrics["eval_accuracy"]:
            self.waited += 1
            control.should_training_stop = self.waited >= self.patience
            return
        self.metrics, self.waited = dict(metrics), 0
        model: torch.nn.Module = kwargs["model"]
        self.weights = {
            name: parameter.detach().clone() for name, parameter in model.named_parameters() if parameter.requires_grad
        }

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        parameters = dict(kwargs["model"].named_parameters())
        with torch.no_grad():
            for name, weight in self.weights.items():
                parameters[name].copy_(weight)


class LabelTrainer(Trainer):
    """Trainer whose loss is cross-entropy over the label head's logits."""

    def __init__(
        self, *args: Any, guard: NonFiniteGuard, autocast: bool = False, compactness: float = 0.0, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.autocast = autocast
        self.compactness = compactness
        self.parameter_count: int | None = None

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> torch.Tensor:
        """transformers calls `model.train()` on every step: a walk over every module, thousands with LoRA on all
        layers. The mode only changes around evaluation, so that call is skipped while the model is already
        training (which `fit` makes true of every module before the first step)."""
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
            features = label_features(lm, ids, inputs["last_index"])
        logits = head_logits(lm, features)
        smoothing = 0.0
        if model.training:
            self.guard.watch(logits, inputs["index"])
            smoothing = self.args.label_smoothing_factor
        loss = torch.nn.functional.cross_entropy(logits, inputs["labels"], label_smoothing=smoothing)
        if model.training and self.compactness:
            loss = loss + self.compactness * angular_spread(features, head_weight(lm), inputs["labels"])
        return (loss, {"logits": logits}) if return_outputs else loss


def angular_spread(features: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How far, in angle, each question's feature lies from its label's head row (1 - cosine, averaged): a term that
    draws each label's questions together around one direction, so that questions of no label stand apart
    (`TrainConfig.compactness`)."""
    return (1 - torch.nn.functional.cosine_similarity(features.float(), weight[labels], dim=1)).mean()


def head_weight(lm: torch.nn.Module) -> torch.Tensor:
    """The trainable label head's rows (peft wraps the head it trains and saves)."""
    head = getattr(lm, HEAD)
    trained = getattr(head, "modules_to_save", None)
    weight: torch.Tensor = (trained[head.active_adapter] if trained is not None else head).weight
    return weight


class CsvMetrics(TrainerCallback):
    """Appends every evaluation to metrics.csv, with the epoch's training time and tokens/s (evaluation excluded)."""

    COLUMNS = ("epoch", "step", "train_seconds", "train_tokens_per_s", "eval_loss", "eval_accuracy")

    def __init__(self, path: Path, tokens_per_epoch: int) -> None:
        self.path = path
        self.tokens_per_epoch = tokens_per_epoch
        self.started = 0.0
        self.seconds = float("nan")
        self.epoch_seconds: list[float] = []

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        synchronize()
        self.started = time.perf_counter()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        synchronize()
        self.seconds = time.perf_counter() - self.started
        self.epoch_seconds.append(self.seconds)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **_: Any
    ) -> None:
        if not metrics:
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
            raise UsageError(
                f"cannot report to {name!r}: its package is not installed (pip install {name}) "
                f"or it is not one of transformers' integrations; available here: {sorted(available) or 'none'}"
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

    `work` receives metrics.csv and, when reporting to TensorBoard, runs/.

    Returns the best epoch's evaluation plus `train_seconds_per_epoch` and `train_tokens_per_s` (median over epochs),
    `first_epoch_seconds` (which includes compiling) and `epochs_run`.
    """
    device = next(model.parameters()).device
    check_device(config, device)
    config = config.on(device)
    cuda = device.type == "cuda"
    args = TrainingArguments(
        output_dir=str(work),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=max(config.batch_size, engine.batch_size),  # no gradients: serving's batches
        learning_rate=config.learning_rate,
        label_smoothing_factor=config.label_smoothing,
        warmup_steps=config.warmup_ratio,
        train_sampling_strategy="group_by_length" if config.batching == "length" else "random",
        eval_strategy="epoch",
        save_strategy="no",  # BestEpoch keeps the best epoch's weights in memory
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
    widths = padded_widths(train_set.lengths, config.graph_widths) if config.cuda_graphs else ()
    timing = CsvMetrics(work / "metrics.csv", tokens_per_epoch=train_set.tokens)
    guard = NonFiniteGuard(list(train))
    # accuracy, not loss, picks the epoch: held-out loss often rises with confidence while accuracy still improves
    # (docs/training.md); temperature scaling afterwards repairs the calibration
    best = BestEpoch(config.patience)
    trainer = LabelTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=LabelDataset(engine, held_out),
        data_collator=collate(pad_id(engine.tokenizer), widths),
        compute_metrics=accuracy,
        callbacks=[
            guard,
            best,
            timing,
            RichProgress(),
        ],
        guard=guard,
        autocast=bool(config.autocast),
        compactness=config.compactness,
    )
    trainer.remove_callback(ProgressCallback)
    lm: PreTrainedModel = model.get_base_model()  # type: ignore[assignment]  # peft types it as Module
    # from_pretrained leaves the base model's modules in eval mode while peft's wrapper says it trains:
    # `training_step` would skip model.train() until the first evaluation, and the first epoch would run without
    # dropout and without CUDA graphs
    model.train()
    with (
        compiled_layers(lm) if config.compile else nullcontext(),
        graphed_decoder(lm, config.batch_size, compiled=bool(config.compile)) if config.cuda_graphs else nullcontext(),
    ):
        trainer.train()
    epochs = timing.epoch_seconds
    seconds = float(np.median(epochs[1:] if len(epochs) > 1 else epochs))  # the first epoch also compiles
    return best.metrics | {
        "train_seconds_per_epoch": seconds,
        "train_tokens_per_s": train_set.tokens / seconds,
        "first_epoch_seconds": epochs[0],
        "epochs_run": len(epochs),
    }
