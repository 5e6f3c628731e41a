"""Training commands: train, eval, baseline, retrain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from qcat.command_line import (
    AdapterOption,
    AnnounceOption,
    BaseModelOption,
    BrokersOption,
    DeviceOption,
    QuantizeOption,
    RegistryOption,
    announce,
    console,
    fail,
    settings_from,
)
from qcat.errors import QcatError
from qcat.registry import DEFAULT_TOLERANCE
from qcat.settings import EngineSettings
from qcat.training.config import Recipe, check_device
from qcat.training.options import recipe_options

OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace the files of an existing --report folder.")]
DtypeOption = Annotated[str | None, typer.Option(help="auto, bfloat16, float16, float32. \\[env: QCAT_DTYPE]")]

commands = typer.Typer()


@commands.command()
@recipe_options
def train(
    data: Annotated[Path, typer.Argument(help="Labeled questions: .jsonl or .csv with text,label.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the new adapter (must not exist).")],
    taxonomy: Annotated[Path | None, typer.Option(help="Labels (JSON or one per line); default: the data's.")] = None,
    eval_data: Annotated[
        Path | None, typer.Option("--eval", help="Held-out set; default: a stratified split (--eval-fraction).")
    ] = None,
    init_adapter: Annotated[
        Path | None,
        typer.Option(help="Continue training this adapter (same base model and labels; its LoRA settings are kept)."),
    ] = None,
    *,
    recipe: Recipe,
    base_model: str | None,
    device: str | None,
    dtype: str | None,
) -> None:
    """Fine-tune a LoRA adapter on labeled questions, evaluate it and save it with its report."""
    settings = settings_from(EngineSettings, base_model=base_model, device=device, dtype=dtype)
    start_cuda(settings.device)
    from qcat.pytorch.model import resolve_device
    from qcat.training.run import SPEED_METRICS, TrainRequest, read_training_set
    from qcat.training.run import train as run_train

    request = TrainRequest(out=out, recipe=recipe, init_adapter=init_adapter)
    try:
        check_device(recipe.config, resolve_device(settings.device))
        training = read_training_set(data, recipe, taxonomy=taxonomy, eval_data=eval_data, init_adapter=init_adapter)
        if recipe.seeds > 1:
            from qcat.training.soup import train_soup

            directory, metrics = train_soup(training, request, settings)
        else:
            directory, metrics = run_train(training, request, settings)
    except QcatError as error:
        raise fail(error) from error
    kind = f"soup of {recipe.seeds} seeds" if recipe.seeds > 1 else "adapter"
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
    dtype: DtypeOption = None,
    quantize: QuantizeOption = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Evaluate an adapter (or, without --adapter, the base model zero-shot) and write a report. Questions whose
    label is not one of the adapter's are unknown ones: the report then measures where they end (open set)."""
    from qcat.training.run import evaluate_model

    settings = settings_from(
        EngineSettings, base_model=base_model, adapter=adapter, device=device, dtype=dtype, quantize=quantize
    )
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
    from qcat.training.data import load_examples
    from qcat.training.soup import make_soup

    settings = settings_from(EngineSettings, base_model=base_model, device=device)
    try:
        metrics = make_soup(adapters, load_examples(eval_data), out, settings, name=eval_data.name)
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
@recipe_options
def retrain(
    data: Annotated[Path, typer.Option("--data", help="The base labeled data (.jsonl or .csv).")],
    corrections: Annotated[
        Path, typer.Option("--corrections", envvar="QCAT_CORRECTIONS_DIR", help="The corrections store.")
    ],
    eval_data: Annotated[
        Path,
        typer.Option("--eval", help="The frozen gate set every version is scored on (never trained or selected on)."),
    ],
    registry: RegistryOption,
    work: Annotated[Path, typer.Option(help="Scratch directory (replaced).")] = Path("qcat-data/retrain"),
    tolerance: Annotated[float, typer.Option(help="Allowed accuracy drop on the gate set.")] = DEFAULT_TOLERANCE,
    from_current: Annotated[
        bool, typer.Option(help="Start from the current adapter's weights instead of from scratch.")
    ] = False,
    force: Annotated[bool, typer.Option(help="Promote the candidate whatever the gate says.")] = False,
    announce_it: AnnounceOption = False,
    brokers: BrokersOption = None,
    *,
    recipe: Recipe,
    base_model: str | None,
    device: str | None,
    dtype: str | None,
) -> None:
    """Retrain on base data + corrections and promote through the paired gate (a CronJob's command).

    Selection uses a split of base data + corrections; --eval is the frozen gate set both adapters are scored on.
    Exit 0: promoted; 3: worse beyond the tolerance, the current adapter stays; anything else: an error. Last line:
    a JSON summary with the paired figures (docs/feedback-loop.md).
    """
    from qcat.pytorch.model import resolve_device
    from qcat.training.retrain import RetrainRequest
    from qcat.training.retrain import retrain as run_retrain

    settings = settings_from(EngineSettings, base_model=base_model, device=device, dtype=dtype)
    request = RetrainRequest(
        data=data,
        corrections=corrections,
        eval_data=eval_data,
        registry=registry,
        work=work,
        tolerance=tolerance,
        from_current=from_current,
        force=force,
        recipe=recipe,
    )
    try:
        check_device(recipe.config, resolve_device(settings.device))
        summary = run_retrain(request, settings)
        if summary["promoted"] and announce_it:
            from qcat.registry import Registry

            announce("promote", summary["version"], Registry(registry).path(summary["version"]), brokers=brokers)
    except QcatError as error:
        raise fail(error) from error
    console.print(summary["reason"])
    print(json.dumps(summary))
    raise typer.Exit(code=0 if summary["promoted"] else 3)


def adapters_promote(
    version: str,
    registry: RegistryOption,
    gate: Annotated[
        Path | None,
        typer.Option(
            help="Labeled gate set: the candidate and the current adapter are scored on it (answers kept in the "
            "registry) and compared row by row. Default: a gate set both were scored on before, else their metrics."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Promote whatever the gate says.")] = False,
    tolerance: Annotated[float, typer.Option(help="Allowed accuracy drop on the gate set.")] = DEFAULT_TOLERANCE,
    require_shadow_events: Annotated[
        int, typer.Option(min=0, help="Also require shadow evidence (`adapters compare`) of this many events.")
    ] = 0,
    require_shadow_corrections: Annotated[
        int,
        typer.Option(min=0, help="...and of this many corrections, on which the candidate is not less accurate."),
    ] = 0,
    base_model: BaseModelOption = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    announce_it: AnnounceOption = False,
    brokers: BrokersOption = None,
) -> None:
    """Make a version current if it is not worse than the current one beyond the tolerance, paired on one gate set
    (docs/feedback-loop.md). Exit 3 if refused; the reason gives both accuracies and the flips each way."""
    from qcat.registry import Registry
    from qcat.training.data import load_examples
    from qcat.training.gate import gated_promotion

    settings = settings_from(EngineSettings, base_model=base_model, device=device, dtype=dtype)
    try:
        store = Registry(registry)
        if (require_shadow_events or require_shadow_corrections) and not force:
            from qcat.shadow import evidence_of, lacking

            events, corrections = require_shadow_events, require_shadow_corrections
            refusal = lacking(evidence_of(store, version), events=events, corrections=corrections)
            if refusal is not None:
                console.print(refusal)
                raise typer.Exit(code=3)
        rows = load_examples(gate) if gate is not None else None
        decision, _ = gated_promotion(store, version, rows, settings, tolerance=tolerance, force=force)
        console.print(decision.reason)
        if decision.promoted and announce_it:
            announce("promote", version, store.path(version), brokers=brokers)
    except QcatError as error:
        raise fail(error) from error
    raise typer.Exit(code=0 if decision.promoted else 3)
