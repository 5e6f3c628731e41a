"""Training commands: train, eval, baseline, retrain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from qcat.command_line import (
    AdapterOption,
    AnnounceOption,
    BaseModelOption,
    DeviceOption,
    QuantizeOption,
    RegistryOption,
    announce,
    console,
    fail,
    settings_from,
)
from qcat.errors import QcatError
from qcat.lora import DEFAULT_LORA, LoraSpec
from qcat.registry import DEFAULT_TOLERANCE
from qcat.schemas.prompt import MAX_QUESTION_TOKENS
from qcat.settings import EngineSettings
from qcat.training.config import RoutingGoal, TrainConfig, check_device
from qcat.training.data import ConflictPolicy

OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace the files of an existing --report folder.")]
# options shared by `train` and `retrain`; every default comes from TrainConfig, LoraSpec or the registry
EpochsOption = Annotated[int, typer.Option(help="Most epochs (early stopping may end sooner).")]
BatchSizeOption = Annotated[int, typer.Option(help="Training batch size.")]
LearningRateOption = Annotated[float, typer.Option(help="AdamW learning rate.")]
SeedOption = Annotated[int, typer.Option(help="Seed for initialisation, shuffling and (without --eval) the split.")]
SeedsOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Train this many seeds (--seed, --seed+1, ...) on one split and keep their average (a soup): N times "
        "the training, one adapter's serving cost, more accurate than one seed (docs/training.md).",
    ),
]
CompileOption = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile the decoder layers: faster epochs after a one-off compile, so it pays off on long runs. "
        "Default: the device's (docs/training.md).",
    ),
]
CudaGraphsOption = Annotated[
    bool | None,
    typer.Option(
        "--cuda-graphs/--no-cuda-graphs",
        help="Replay each full batch's decoder as CUDA graphs (CUDA only): removes the host's per-step overhead, "
        "which bounds small batches; one capture, and its GPU memory, per batch width. Default: on with CUDA.",
    ),
]
AutocastOption = Annotated[
    bool | None,
    typer.Option(
        "--autocast/--no-autocast",
        help="bf16 autocast for the decoder and LoRA matmuls (CUDA only; LoRA's weights and the head stay float32). "
        "Default: on with CUDA. Speed and accuracy of each combination: docs/training.md.",
    ),
]
LabelSmoothingOption = Annotated[
    float,
    typer.Option(min=0.0, max=0.5, help="Move this much of each training target to the other labels (a regulariser)."),
]

ReviewPrecisionOption = Annotated[
    float,
    typer.Option(
        min=0.01,
        max=1.0,
        help="Choose the adapter's review threshold as the lowest at which this share of routed answers is right on "
        "the held-out rows (the worker sends answers under it to review).",
    ),
]
UnknownRecallOption = Annotated[
    float | None,
    typer.Option(
        min=0.01,
        max=1.0,
        help="Instead: the lowest threshold that sends this share of the held-out --unknown-label questions to review.",
    ),
]
ReviewCoverageOption = Annotated[
    float | None,
    typer.Option(
        min=0.01,
        max=1.0,
        help="Instead: the highest threshold that still routes this share of the held-out answers; for streams "
        "that hold questions outside the taxonomy when none are labelled.",
    ),
]
UnknownLabelOption = Annotated[
    str | None,
    typer.Option(help="A 'none of these' label of the data: trained like any other, its answers always go to review."),
]

commands = typer.Typer()


@commands.command()
def train(
    data: Annotated[Path, typer.Argument(help="Labeled questions: .jsonl or .csv with text,label.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the new adapter (must not exist).")],
    taxonomy: Annotated[Path | None, typer.Option(help="Labels (JSON or one per line); default: the data's.")] = None,
    eval_data: Annotated[Path | None, typer.Option("--eval", help="Held-out set; default: a stratified split.")] = None,
    base_model: BaseModelOption = None,
    epochs: EpochsOption = TrainConfig.epochs,
    batch_size: BatchSizeOption = TrainConfig.batch_size,
    learning_rate: LearningRateOption = TrainConfig.learning_rate,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = DEFAULT_LORA.rank,
    lora_alpha: Annotated[int | None, typer.Option(help="LoRA scaling numerator; default: twice the rank.")] = None,
    lora_dropout: Annotated[float, typer.Option(help="Dropout on the LoRA branch's input.")] = DEFAULT_LORA.dropout,
    target_module: Annotated[
        list[str] | None,
        typer.Option(help="Linear layers to adapt (repeatable); default: every linear layer of a decoder block."),
    ] = None,
    label_smoothing: LabelSmoothingOption = TrainConfig.label_smoothing,
    patience: Annotated[
        int, typer.Option(help="Stop after this many epochs without better held-out accuracy.")
    ] = TrainConfig.patience,
    max_question_tokens: Annotated[int, typer.Option(help="Longer questions are truncated.")] = MAX_QUESTION_TOKENS,
    conflicts: Annotated[
        ConflictPolicy,
        typer.Option(
            help="Texts that carry different labels (in --eval too): error stops, drop removes them, majority keeps "
            "the label most of their rows carry; dropped rows are listed in the report."
        ),
    ] = "error",
    review_precision: ReviewPrecisionOption = RoutingGoal.review_precision,
    unknown_recall: UnknownRecallOption = RoutingGoal.unknown_recall,
    review_coverage: ReviewCoverageOption = RoutingGoal.review_coverage,
    unknown_label: UnknownLabelOption = RoutingGoal.unknown_label,
    seed: SeedOption = TrainConfig.seed,
    seeds: SeedsOption = 1,
    compile_layers: CompileOption = TrainConfig.compile,
    cuda_graphs: CudaGraphsOption = TrainConfig.cuda_graphs,
    autocast: AutocastOption = TrainConfig.autocast,
    graph_widths: Annotated[
        int,
        typer.Option(
            min=1,
            help="With --cuda-graphs, pad batches to this many widths chosen from the data: each is one capture "
            "and its memory, fewer widths mean more padding.",
        ),
    ] = TrainConfig.graph_widths,
    batching: Annotated[
        Literal["length", "random"],
        typer.Option(help="Batches of similar question lengths (little padding), or random rows (the plain recipe's)."),
    ] = TrainConfig.batching,
    init_adapter: Annotated[
        Path | None,
        typer.Option(help="Continue training this adapter (same base model and labels; its LoRA settings are kept)."),
    ] = None,
    device: DeviceOption = None,
    dtype: Annotated[str | None, typer.Option(help="auto, bfloat16, float32.")] = None,
    report_to: Annotated[
        list[str] | None,
        typer.Option(help="Also log metrics to: tensorboard, wandb, mlflow (repeatable; needs that package)."),
    ] = None,
) -> None:
    """Fine-tune a LoRA adapter on labeled questions, evaluate it and save it with its report."""
    settings = settings_from(EngineSettings, base_model=base_model, device=device, dtype=dtype)
    start_cuda(settings.device)
    from qcat.model import resolve_device
    from qcat.training.run import SPEED_METRICS, TrainRequest
    from qcat.training.run import train as run_train

    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        patience=patience,
        seed=seed,
        label_smoothing=label_smoothing,
        compile=compile_layers,
        cuda_graphs=cuda_graphs,
        autocast=autocast,
        graph_widths=graph_widths,
        batching=batching,
        report_to=tuple(report_to or ()),
    )
    request = TrainRequest(
        data=data,
        out=out,
        taxonomy=taxonomy,
        eval_data=eval_data,
        max_question_tokens=max_question_tokens,
        conflicts=conflicts,
        init_adapter=init_adapter,
        routing=RoutingGoal(
            review_precision=review_precision,
            unknown_recall=unknown_recall,
            review_coverage=review_coverage,
            unknown_label=unknown_label,
        ),
        lora=LoraSpec(
            rank=rank,
            alpha=lora_alpha,
            dropout=lora_dropout,
            targets=tuple(target_module) if target_module else DEFAULT_LORA.targets,
        ),
        config=config,
    )
    try:
        check_device(config, resolve_device(settings.device))
        if seeds > 1:
            from qcat.training.soup import train_soup

            directory, metrics = train_soup(request, settings, seeds)
        else:
            directory, metrics = run_train(request, settings)
    except QcatError as error:
        raise fail(error) from error
    kind = f"soup of {seeds} seeds" if seeds > 1 else "adapter"
    console.print(
        f"{kind} saved to {directory}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"
    )
    keys = ("accuracy", "macro_f1", *SPEED_METRICS, "seeds")
    print(json.dumps({"adapter": str(directory)} | {key: metrics[key] for key in keys if key in metrics}))


def start_cuda(device: str) -> None:
    """Create the CUDA context on a thread while transformers and peft import: each takes seconds when a run starts
    cold, and neither needs the other (docs/training.md, where TREC-6's seconds go)."""
    import threading

    import torch

    if device != "cpu" and torch.cuda.is_available():
        threading.Thread(target=torch.cuda.init, name="cuda-init", daemon=True).start()


@commands.command(name="eval")
def evaluate(
    data: Annotated[Path, typer.Argument(help="Labeled questions to evaluate on.")],
    report: Annotated[Path, typer.Option("--report", help="Directory for report.md, metrics.json and plots.")],
    adapter: AdapterOption = None,
    base_model: BaseModelOption = None,
    device: DeviceOption = None,
    quantize: QuantizeOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Evaluate an adapter (or, without --adapter, the base model zero-shot) and write a report."""
    from qcat.training.run import evaluate_model

    settings = settings_from(EngineSettings, base_model=base_model, adapter=adapter, device=device, quantize=quantize)
    try:
        metrics = evaluate_model(data, report, settings, overwrite=overwrite)
    except QcatError as error:
        raise fail(error) from error
    console.print(f"report in {report}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")


@commands.command()
def soup(
    adapters: Annotated[list[Path], typer.Argument(help="Adapters trained by one recipe (e.g. different --seed).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the averaged adapter (must not exist).")],
    eval_data: Annotated[
        Path, typer.Option("--eval", help="Held-out questions none of them trained on: calibration and metrics.")
    ],
    base_model: BaseModelOption = None,
    device: DeviceOption = None,
) -> None:
    """Average adapters into one (a model soup): one adapter's serving cost, several seeds' agreement."""
    from qcat.training.soup import make_soup

    settings = settings_from(EngineSettings, base_model=base_model, device=device)
    try:
        metrics = make_soup(adapters, eval_data, out, settings)
    except QcatError as error:
        raise fail(error) from error
    console.print(f"soup saved to {out}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")


@commands.command()
def baseline(
    data: Annotated[Path, typer.Argument(help="Labeled questions to evaluate on.")],
    report: Annotated[Path, typer.Option("--report", help="Directory for report.md, metrics.json and plots.")],
    base_model: BaseModelOption = None,
    taxonomy: Annotated[
        Path | None, typer.Option(help="Labels (JSON or one per line); default: TREC's, or else the data's own.")
    ] = None,
    device: DeviceOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Evaluate the base model zero-shot (the instruction prompt listing the categories): the bar to beat."""
    from qcat.training.run import evaluate_model

    settings = settings_from(EngineSettings, base_model=base_model, taxonomy=taxonomy, device=device)
    try:
        metrics = evaluate_model(data, report, settings.model_copy(update={"adapter": None}), overwrite=overwrite)
    except QcatError as error:
        raise fail(error) from error
    console.print(f"zero-shot report in {report}: accuracy {metrics['accuracy']:.4f}")


@commands.command()
def retrain(
    data: Annotated[Path, typer.Option("--data", help="The base labeled data (.jsonl or .csv).")],
    corrections: Annotated[
        Path, typer.Option("--corrections", envvar="QCAT_CORRECTIONS_DIR", help="The corrections store.")
    ],
    eval_data: Annotated[Path, typer.Option("--eval", help="The fixed eval set every version is judged on.")],
    registry: RegistryOption,
    work: Annotated[Path, typer.Option(help="Scratch directory (replaced).")] = Path("qcat-data/retrain"),
    base_model: BaseModelOption = None,
    device: DeviceOption = None,
    epochs: EpochsOption = TrainConfig.epochs,
    batch_size: BatchSizeOption = TrainConfig.batch_size,
    learning_rate: LearningRateOption = TrainConfig.learning_rate,
    seed: SeedOption = TrainConfig.seed,
    seeds: SeedsOption = 1,
    label_smoothing: LabelSmoothingOption = TrainConfig.label_smoothing,
    compile_layers: CompileOption = TrainConfig.compile,
    cuda_graphs: CudaGraphsOption = TrainConfig.cuda_graphs,
    autocast: AutocastOption = TrainConfig.autocast,
    tolerance: Annotated[float, typer.Option(help="Allowed accuracy drop on the fixed eval set.")] = DEFAULT_TOLERANCE,
    from_current: Annotated[
        bool, typer.Option(help="Start from the current adapter's weights instead of from scratch.")
    ] = False,
    announce_it: AnnounceOption = False,
) -> None:
    """Retrain on base data + corrections and promote through the gate (a CronJob's command).

    Exit 0: promoted; 3: not better, the current adapter stays; anything else: an error. Last line: JSON summary.
    """
    from qcat.model import resolve_device
    from qcat.training.retrain import RetrainRequest
    from qcat.training.retrain import retrain as run_retrain

    settings = settings_from(EngineSettings, base_model=base_model, device=device)

    request = RetrainRequest(
        data=data,
        corrections=corrections,
        eval_data=eval_data,
        registry=registry,
        work=work,
        tolerance=tolerance,
        from_current=from_current,
        seeds=seeds,
        config=TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            label_smoothing=label_smoothing,
            compile=compile_layers,
            cuda_graphs=cuda_graphs,
            autocast=autocast,
        ),
    )
    try:
        check_device(request.config, resolve_device(settings.device))
        summary = run_retrain(request, settings)
        if summary["promoted"] and announce_it:
            from qcat.registry import Registry

            announce("promote", summary["version"], Registry(registry).path(summary["version"]))
    except QcatError as error:
        raise fail(error) from error
    console.print(summary["reason"])
    print(json.dumps(summary))
    raise typer.Exit(code=0 if summary["promoted"] else 3)
