"""Fine-tuning: LoRA on the decoder plus the label head, through transformers' Trainer.

The loss is cross-entropy over the label head's logits on exactly the prompts the engine serves (`Engine.encode`,
`label_logits`): training and serving share one code path. Validation loss and accuracy are tracked every epoch,
early stopping on held-out accuracy keeps the best checkpoint, and every evaluation is appended to metrics.csv.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from transformers import EarlyStoppingCallback, ProgressCallback, Trainer, TrainerCallback, TrainingArguments

from qcat.engine import Engine
from qcat.errors import QcatError
from qcat.model import label_logits, right_pad
from training.data import Example
from training.progress import RichProgress


class TrainingError(QcatError):
    pass


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 2e-4
    patience: int = 2
    seed: int = 0
    warmup_ratio: float = 0.06
    group_by_length: bool = True
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


def collate(pad_id: int) -> Any:
    """Batches padded exactly as the engine pads them at serving time (`right_pad`)."""

    def collate_rows(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, last_index = right_pad([row["input_ids"] for row in rows], pad_id)
        return {
            "input_ids": input_ids,
            "last_index": last_index,
            "labels": torch.tensor([row["labels"] for row in rows]),
            "index": torch.tensor([row["index"] for row in rows]),
        }

    return collate_rows


class LabelTrainer(Trainer):
    """Trainer whose loss is cross-entropy over the label head; non-finite logits stop training, naming the rows."""

    examples: Sequence[Example] = ()

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        lm = model.get_base_model() if isinstance(model, PeftModel) else model
        logits = label_logits(lm, inputs["input_ids"], inputs["last_index"])
        bad = (~torch.isfinite(logits).all(dim=1)).nonzero().flatten().tolist()
        if bad:
            rows = [self.examples[int(inputs["index"][i])].source for i in bad] if self.examples else bad
            raise TrainingError(f"non-finite logits for {len(bad)} inputs ({rows[:5]}); try --dtype float32")
        loss = torch.nn.functional.cross_entropy(logits, inputs["labels"])
        if not torch.isfinite(loss):
            raise TrainingError("the loss became non-finite; lower the learning rate or use float32")
        return (loss, {"logits": logits}) if return_outputs else loss


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

    Returns the final evaluation plus `train_seconds_per_epoch` and `train_tokens_per_s` (median over epochs).
    """
    args = TrainingArguments(
        output_dir=str(work),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_ratio,
        train_sampling_strategy="group_by_length" if config.group_by_length else "random",
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
        use_cpu=engine.device.type == "cpu",
        bf16=engine.device.type == "cuda",
        disable_tqdm=False,
    )
    train_set = LabelDataset(engine, train)
    timing = CsvMetrics(work / "metrics.csv", tokens_per_epoch=train_set.tokens)
    trainer = LabelTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=LabelDataset(engine, held_out),
        data_collator=collate(engine.pad_id),
        compute_metrics=accuracy,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=config.patience), timing, RichProgress()],
    )
    trainer.remove_callback(ProgressCallback)
    trainer.examples = list(train)
    trainer.train()
    result: dict[str, float] = trainer.evaluate()
    seconds = float(np.median(timing.epoch_seconds))
    result |= {"train_seconds_per_epoch": seconds, "train_tokens_per_s": train_set.tokens / seconds}
    return result
