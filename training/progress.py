"""Rich progress bars on stderr (stdout stays machine-readable): training's steps, epoch, last loss and eval accuracy
instead of tqdm's lines, and a plain bar for scoring a data set. Where stderr is not a terminal (CI, a CronJob, a
redirect) a bar shows nothing, so each epoch and each scored chunk is also an INFO log line there."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback

log = structlog.get_logger(__name__)


def _columns() -> tuple[Any, ...]:
    return (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


@contextmanager
def counting(description: str, total: int) -> Iterator[Any]:
    """A bar for `total` items; call the yielded function with how many more are done."""
    console = Console(stderr=True)
    with Progress(*_columns(), TimeRemainingColumn(), console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)
        counted = [0]

        def advance(done: int) -> None:
            progress.advance(task, done)
            counted[0] += done
            if not console.is_terminal:
                log.info(description, done=counted[0], total=total)

        yield advance


class RichProgress(TrainerCallback):
    """Replaces transformers' ProgressCallback; writes to stderr so stdout stays machine-readable."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            *_columns(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=console or Console(stderr=True),
        )
        self.train_task: Any = None
        self.eval_task: Any = None
        self.status: dict[str, str] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.progress.start()
        self.train_task = self.progress.add_task("training", total=state.max_steps, status="")

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        epoch = f"epoch {state.epoch:.2f}/{args.num_train_epochs}"
        status = " ".join([epoch, *self.status.values()])
        self.progress.update(self.train_task, completed=state.global_step, status=status)

    def on_prediction_step(self, args: Any, state: Any, control: Any, eval_dataloader: Any = None, **_: Any) -> None:
        if self.eval_task is None:
            total = len(eval_dataloader) if eval_dataloader is not None else None
            self.eval_task = self.progress.add_task("evaluating", total=total, status="")
        self.progress.advance(self.eval_task)

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **_: Any
    ) -> None:
        if self.eval_task is not None:
            self.progress.remove_task(self.eval_task)
            self.eval_task = None
        for key in ("eval_loss", "eval_accuracy"):
            if metrics and key in metrics:
                self.status[key] = f"{key.removeprefix('eval_')} {metrics[key]:.4f}"
        if not self.progress.console.is_terminal:
            log.info(
                "epoch done",
                epoch=round(state.epoch or 0, 2),
                of=args.num_train_epochs,
                step=state.global_step,
                **{key.removeprefix("eval_"): round(value, 4) for key, value in (metrics or {}).items()
                   if key in ("eval_loss", "eval_accuracy")},
            )  # fmt: skip

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **_: Any) -> None:
        if logs and "loss" in logs:
            self.status["train_loss"] = f"train loss {logs['loss']:.4f}"

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.progress.stop()
