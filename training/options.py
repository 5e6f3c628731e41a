"""The training recipe's command-line options, declared once for `qcat train` and `qcat retrain`.

`recipe_options` gives a command every option below and hands it one `Recipe` built from them, so the two commands
cannot drift apart (an option added here is an option of both) and neither rebuilds the recipe field by field. Every
default comes from `TrainConfig`, `LoraSpec`, `RoutingGoal` or `Recipe`, where it is written once.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

import typer

from qcat.command_line import BaseModelOption, DeviceOption
from qcat.lora import DEFAULT_LORA, LoraSpec
from qcat.training.config import Recipe, RoutingGoal, TrainConfig
from qcat.training.data import ConflictPolicy

EvalFraction = Annotated[
    float,
    typer.Option(
        min=0.01,
        max=0.5,
        help="Share of the data held out (stratified) to select the epoch, temperature and review "
        "threshold; --eval replaces it in `train`.",
    ),
]


def _options(
    base_model: BaseModelOption = None,
    device: DeviceOption = None,
    dtype: Annotated[str | None, typer.Option(help="auto, bfloat16, float32.")] = None,
    epochs: Annotated[int, typer.Option(help="Most epochs (early stopping may end sooner).")] = TrainConfig.epochs,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = TrainConfig.batch_size,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate.")] = TrainConfig.learning_rate,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = DEFAULT_LORA.rank,
    lora_alpha: Annotated[int | None, typer.Option(help="LoRA scaling numerator; default: twice the rank.")] = None,
    lora_dropout: Annotated[float, typer.Option(help="Dropout on the LoRA branch's input.")] = DEFAULT_LORA.dropout,
    target_module: Annotated[
        list[str] | None,
        typer.Option(help="Linear layers to adapt (repeatable); default: every linear layer of a decoder block."),
    ] = None,
    label_smoothing: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.5, help="Move this much of each training target to the other labels (a regulariser)."
        ),
    ] = TrainConfig.label_smoothing,
    compactness: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Weight of a loss term that gathers each label's questions around its head row, so that questions "
            "outside the taxonomy stand apart (docs/training.md).",
        ),
    ] = TrainConfig.compactness,
    open_set: Annotated[
        bool,
        typer.Option(
            "--open-set/--no-open-set",
            help="Fit the adapter's open-set distance and boundary: questions far from every label's go to review.",
        ),
    ] = Recipe.open_set,
    known_coverage: Annotated[
        float,
        typer.Option(
            min=0.5,
            max=1.0,
            help="Draw the open-set boundary where it keeps this share of held-out known questions inside (without "
            "a 'none of these' label, whose held-out questions otherwise place it).",
        ),
    ] = RoutingGoal.known_coverage,
    patience: Annotated[
        int, typer.Option(help="Stop after this many epochs without better held-out accuracy.")
    ] = TrainConfig.patience,
    max_question_tokens: Annotated[
        int, typer.Option(help="Longer questions are truncated.")
    ] = Recipe.max_question_tokens,
    eval_fraction: EvalFraction = Recipe.eval_fraction,
    conflicts: Annotated[
        ConflictPolicy,
        typer.Option(
            help="Texts that carry different labels (held-out rows too): error stops, drop removes them, majority "
            "keeps the label most of their rows carry; dropped rows are listed in the report."
        ),
    ] = Recipe.conflicts,
    review_precision: Annotated[
        float,
        typer.Option(
            min=0.01,
            max=1.0,
            help="Choose the adapter's review threshold as the lowest at which this share of routed answers is right "
            "on the held-out rows (the worker sends answers under it to review).",
        ),
    ] = RoutingGoal.review_precision,
    unknown_recall: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            max=1.0,
            help="Instead: the lowest threshold that sends this share of the held-out --unknown-label questions to "
            "review.",
        ),
    ] = RoutingGoal.unknown_recall,
    review_coverage: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            max=1.0,
            help="Instead: the highest threshold that still routes this share of the held-out answers; for streams "
            "that hold questions outside the taxonomy when none are labelled.",
        ),
    ] = RoutingGoal.review_coverage,
    unknown_label: Annotated[
        str | None,
        typer.Option(
            help="A 'none of these' label of the data: trained like any other, its answers always go to review."
        ),
    ] = RoutingGoal.unknown_label,
    seed: Annotated[
        int, typer.Option(help="Seed for initialisation, shuffling and the held-out split.")
    ] = TrainConfig.seed,
    seeds: Annotated[
        int,
        typer.Option(
            min=1,
            help="Train this many seeds (--seed, --seed+1, ...) on one split and keep their average (a soup): N "
            "times the training, one adapter's serving cost, more accurate than one seed (docs/training.md).",
        ),
    ] = Recipe.seeds,
    compile_layers: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the decoder layers: faster epochs after a one-off compile, so it pays off on long "
            "runs. Default: the device's (docs/training.md).",
        ),
    ] = TrainConfig.compile,
    cuda_graphs: Annotated[
        bool | None,
        typer.Option(
            "--cuda-graphs/--no-cuda-graphs",
            help="Replay each full batch's decoder as CUDA graphs (CUDA only): removes the host's per-step overhead, "
            "which bounds small batches; one capture, and its GPU memory, per batch width. Default: on with CUDA.",
        ),
    ] = TrainConfig.cuda_graphs,
    autocast: Annotated[
        bool | None,
        typer.Option(
            "--autocast/--no-autocast",
            help="bf16 autocast for the decoder and LoRA matmuls (CUDA only; LoRA's weights and the head stay "
            "float32). Default: on with CUDA. Speed and accuracy of each combination: docs/training.md.",
        ),
    ] = TrainConfig.autocast,
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
    report_to: Annotated[
        list[str] | None,
        typer.Option(help="Also log metrics to: tensorboard, wandb, mlflow (repeatable; needs that package)."),
    ] = None,
) -> None:
    """Never called: its parameters are the option set."""


ENGINE_OPTIONS = ("base_model", "device", "dtype")
"""Options that choose the model and where it runs: passed to the command as they are, for its settings."""


def recipe(options: dict[str, Any]) -> Recipe:
    """The recipe the options describe."""
    return Recipe(
        config=TrainConfig(
            epochs=options["epochs"],
            batch_size=options["batch_size"],
            learning_rate=options["learning_rate"],
            patience=options["patience"],
            seed=options["seed"],
            label_smoothing=options["label_smoothing"],
            compactness=options["compactness"],
            compile=options["compile_layers"],
            cuda_graphs=options["cuda_graphs"],
            autocast=options["autocast"],
            graph_widths=options["graph_widths"],
            batching=options["batching"],
            report_to=tuple(options["report_to"] or ()),
        ),
        lora=LoraSpec(
            rank=options["rank"],
            alpha=options["lora_alpha"],
            dropout=options["lora_dropout"],
            targets=tuple(options["target_module"]) if options["target_module"] else DEFAULT_LORA.targets,
        ),
        routing=RoutingGoal(
            review_precision=options["review_precision"],
            unknown_recall=options["unknown_recall"],
            review_coverage=options["review_coverage"],
            unknown_label=options["unknown_label"],
            known_coverage=options["known_coverage"],
        ),
        conflicts=options["conflicts"],
        max_question_tokens=options["max_question_tokens"],
        eval_fraction=options["eval_fraction"],
        seeds=options["seeds"],
        open_set=options["open_set"],
    )


def recipe_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with every option of the recipe: it receives `recipe` (a `Recipe`) and the engine options
    (`ENGINE_OPTIONS`) as keyword arguments, after its own."""
    shared = inspect.signature(_options).parameters
    hints = typing.get_type_hints(_options, include_extras=True) | typing.get_type_hints(command, include_extras=True)
    own = [p for name, p in inspect.signature(command).parameters.items() if name not in {"recipe", *ENGINE_OPTIONS}]
    parameters = [p.replace(annotation=hints[p.name]) for p in [*own, *shared.values()]]

    @functools.wraps(command)
    def with_recipe(**given: Any) -> None:
        options = {name: given.pop(name) for name in shared}
        engine = {name: options[name] for name in ENGINE_OPTIONS}
        command(**given, **engine, recipe=recipe(options))

    with_recipe.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    with_recipe.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_recipe
