"""The `qcat` command: thin wrappers that parse options and call one library function each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from qcat.errors import QcatError
from qcat.logs import configure_logging
from qcat.settings import EngineSettings

Settings = TypeVar("Settings", bound=EngineSettings)
app = typer.Typer(no_args_is_help=True, add_completion=False, help="qcat: streaming question categorization.")
console = Console(stderr=True)

BaseModelOption = Annotated[
    str | None,
    typer.Option("--base-model", help="Hub id, local dir, .gguf file, or tiny-qwen3. [env: QCAT_BASE_MODEL]"),
]
AdapterOption = Annotated[Path | None, typer.Option("--adapter", help="Adapter directory. [env: QCAT_ADAPTER]")]
DeviceOption = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N. [env: QCAT_DEVICE]")]


def settings_from(kind: type[Settings], **flags: Any) -> Settings:
    """Environment first, flags given on the command line on top: one frozen settings object per process."""
    given: dict[str, Any] = {key: value for key, value in flags.items() if value is not None}
    return kind(**given)


def fail(error: QcatError) -> typer.Exit:
    console.print(f"[bold red]error:[/] {error}")
    return typer.Exit(code=2)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")] = False) -> None:
    configure_logging(json=False, level="DEBUG" if verbose else "INFO")


@app.command()
def classify(
    texts: Annotated[list[str], typer.Argument(help="Questions to categorize.")],
    base_model: BaseModelOption = None,
    adapter: AdapterOption = None,
    taxonomy: Annotated[Path | None, typer.Option(help="Labels for zero-shot (JSON or one per line).")] = None,
    device: DeviceOption = None,
    dtype: Annotated[str | None, typer.Option(help="auto, bfloat16, float16, float32.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line on stdout.")] = False,
) -> None:
    """Categorize questions ad hoc with the base model (zero-shot) or an adapter."""
    from qcat.engine import Engine

    settings = settings_from(
        EngineSettings, base_model=base_model, adapter=adapter, taxonomy=taxonomy, device=device, dtype=dtype
    )
    try:
        engine = Engine.load(settings)
        predictions = engine.classify(texts)
    except QcatError as error:
        raise fail(error) from error
    if as_json:
        for text, prediction in zip(texts, predictions, strict=True):
            print(
                json.dumps(
                    {
                        "text": text,
                        "label": prediction.label,
                        "confidence": round(prediction.confidence, 4),
                        "scores": dict(prediction.top(5)),
                        "truncated": prediction.truncated,
                    }
                )
            )
        return
    table = Table(title=f"{engine.base.name} · {engine.adapter_version or 'zero-shot'}")
    for column in ("question", "label", "confidence", "runner-up"):
        table.add_column(column)
    for text, prediction in zip(texts, predictions, strict=True):
        runner_up = prediction.top(2)[-1]
        table.add_row(text, prediction.label, f"{prediction.confidence:.2f}", f"{runner_up[0]} {runner_up[1]:.2f}")
    Console().print(table)


@app.command()
def worker(
    brokers: Annotated[str | None, typer.Option(help="Kafka bootstrap servers. [env: QCAT_BROKERS]")] = None,
    base_model: BaseModelOption = None,
    adapter: AdapterOption = None,
    topic_prefix: Annotated[str | None, typer.Option(help="Topic name prefix. [env: QCAT_TOPIC_PREFIX]")] = None,
    max_batch: Annotated[int | None, typer.Option(help="Most events per micro-batch. [env: QCAT_MAX_BATCH]")] = None,
    max_wait: Annotated[float | None, typer.Option(help="Seconds to fill a batch. [env: QCAT_MAX_WAIT]")] = None,
    threshold: Annotated[
        float | None, typer.Option(help="Below: review topic. [env: QCAT_CONFIDENCE_THRESHOLD]")
    ] = None,
) -> None:
    """Run the streaming worker (all settings: QCAT_* environment variables, see docs/worker.md)."""
    from worker.main import run_worker
    from worker.settings import WorkerSettings

    settings = settings_from(
        WorkerSettings,
        brokers=brokers,
        base_model=base_model,
        adapter=adapter,
        topic_prefix=topic_prefix,
        max_batch=max_batch,
        max_wait=max_wait,
        confidence_threshold=threshold,
    )
    try:
        run_worker(settings)
    except QcatError as error:
        raise fail(error) from error


@app.command()
def broker(port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 9092) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, in memory) on loopback until Ctrl-C."""
    from worker.broker import EmbeddedBroker

    try:
        with EmbeddedBroker(port) as running:
            console.print(f"broker listening on {running.address} (in-memory; Ctrl-C stops it)")
            assert running.process is not None
            running.process.wait()
    except KeyboardInterrupt:
        pass
    except QcatError as error:
        raise fail(error) from error


@app.command()
def demo(
    count: Annotated[int, typer.Option(help="How many sample questions (TREC test set) to stream.")] = 60,
    rate: Annotated[float, typer.Option(help="Questions per second.")] = 20.0,
    base_model: BaseModelOption = None,
    adapter: AdapterOption = None,
) -> None:
    """Run broker + worker locally, stream sample questions through them and show where each one is routed."""
    from worker.demo import run_demo

    try:
        code = run_demo(count=count, rate=rate, adapter=adapter, base_model=base_model, console=Console())
    except QcatError as error:
        raise fail(error) from error
    raise typer.Exit(code=code)


@app.command()
def send(
    questions: Annotated[Path, typer.Argument(help="Questions: .jsonl with a text field, or one per line.")],
    count: Annotated[int, typer.Option(help="How many events (the file is cycled).")] = 100,
    rate: Annotated[float, typer.Option(help="Events per second.")] = 10.0,
) -> None:
    """Produce sample QuestionEvents to <prefix>.incoming (connection from QCAT_BROKERS and friends)."""
    import asyncio

    from worker.send import read_questions
    from worker.send import send as produce
    from worker.settings import WorkerSettings

    settings = WorkerSettings()
    try:
        sent = asyncio.run(produce(settings, read_questions(questions), rate=rate, count=count))
    except QcatError as error:
        raise fail(error) from error
    console.print(f"sent {sent} questions to {settings.topic_prefix}.incoming at {settings.brokers}")


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Labeled questions: .jsonl or .csv with text,label.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the new adapter (must not exist).")],
    taxonomy: Annotated[Path | None, typer.Option(help="Labels (JSON or one per line); default: the data's.")] = None,
    eval_data: Annotated[Path | None, typer.Option("--eval", help="Held-out set; default: a stratified split.")] = None,
    base_model: BaseModelOption = None,
    epochs: Annotated[int, typer.Option(help="Most epochs (early stopping may end sooner).")] = 5,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate.")] = 2e-4,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 16,
    patience: Annotated[int, typer.Option(help="Stop after this many epochs without better held-out accuracy.")] = 2,
    max_question_tokens: Annotated[int, typer.Option(help="Longer questions are truncated.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed for the split, initialisation and shuffling.")] = 0,
    device: DeviceOption = None,
    dtype: Annotated[str | None, typer.Option(help="auto, bfloat16, float32.")] = None,
    report_to: Annotated[
        list[str] | None,
        typer.Option(help="Also log metrics to: tensorboard, wandb, mlflow (repeatable; needs that package)."),
    ] = None,
) -> None:
    """Fine-tune a LoRA adapter on labeled questions, evaluate it and save it with its report."""
    from training.run import TrainRequest
    from training.run import train as run_train
    from training.trainer import TrainConfig

    settings = settings_from(EngineSettings, base_model=base_model, device=device, dtype=dtype)
    request = TrainRequest(
        data=data,
        out=out,
        taxonomy=taxonomy,
        eval_data=eval_data,
        max_question_tokens=max_question_tokens,
        rank=rank,
        alpha=2 * rank,
        config=TrainConfig(
            epochs=epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            patience=patience,
            seed=seed,
            report_to=tuple(report_to or ()),
        ),
    )
    try:
        directory, metrics = run_train(request, settings)
    except QcatError as error:
        raise fail(error) from error
    console.print(
        f"adapter saved to {directory}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}"
    )
    keys = ("accuracy", "macro_f1", "train_seconds_per_epoch", "train_tokens_per_s")
    print(json.dumps({"adapter": str(directory)} | {key: metrics[key] for key in keys}))


@app.command(name="eval")
def evaluate(
    data: Annotated[Path, typer.Argument(help="Labeled questions to evaluate on.")],
    report: Annotated[Path, typer.Option("--report", help="Directory for report.md, metrics.json and plots.")],
    adapter: AdapterOption = None,
    base_model: BaseModelOption = None,
    device: DeviceOption = None,
) -> None:
    """Evaluate an adapter (or, without --adapter, the base model zero-shot) and write a report."""
    from training.run import evaluate_model

    settings = settings_from(EngineSettings, base_model=base_model, adapter=adapter, device=device)
    try:
        metrics = evaluate_model(data, report, settings)
    except QcatError as error:
        raise fail(error) from error
    console.print(f"report in {report}: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}")


@app.command()
def baseline(
    data: Annotated[Path, typer.Argument(help="Labeled questions to evaluate on.")],
    report: Annotated[Path, typer.Option("--report", help="Directory for report.md, metrics.json and plots.")],
    base_model: BaseModelOption = None,
    taxonomy: Annotated[Path | None, typer.Option(help="Labels (JSON or one per line).")] = None,
    device: DeviceOption = None,
) -> None:
    """Evaluate the base model zero-shot (the instruction prompt listing the categories): the bar to beat."""
    from training.run import evaluate_model

    try:
        settings = settings_from(EngineSettings, base_model=base_model, taxonomy=taxonomy, device=device)
        metrics = evaluate_model(data, report, settings.model_copy(update={"adapter": None}))
    except QcatError as error:
        raise fail(error) from error
    console.print(f"zero-shot report in {report}: accuracy {metrics['accuracy']:.4f}")


adapters = typer.Typer(no_args_is_help=True, help="The adapter registry: list, show, promote, roll back.")
app.add_typer(adapters, name="adapters")
RegistryOption = Annotated[Path, typer.Option("--registry", envvar="QCAT_REGISTRY", help="Registry directory.")]


@adapters.command("add")
def adapters_add(
    adapter: Annotated[Path, typer.Argument(help="A trained adapter directory.")], registry: RegistryOption
) -> None:
    """Register a trained adapter (copied; versions are immutable)."""
    from qcat.registry import Registry

    try:
        manifest = Registry(registry).add(adapter)
    except QcatError as error:
        raise fail(error) from error
    console.print(f"registered {manifest.version}")


@adapters.command("list")
def adapters_list(
    registry: RegistryOption,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per version on stdout.")] = False,
) -> None:
    """Versions, oldest first, with their metrics; the current one is marked."""
    from qcat.registry import Registry

    store = Registry(registry)
    current = store.current()
    if as_json:
        for manifest in store.manifests():
            print(
                json.dumps(
                    {
                        "version": manifest.version,
                        "current": manifest.version == current,
                        "metrics": manifest.metrics,
                        "eval_fingerprint": manifest.eval_fingerprint,
                    }
                )
            )
        return
    table = Table(title=str(registry))
    for column in ("", "version", "created", "accuracy", "macro-F1", "eval set"):
        table.add_column(column)
    for manifest in store.manifests():
        table.add_row(
            "*" if manifest.version == current else "",
            manifest.version,
            f"{manifest.created_at:%Y-%m-%d %H:%M}",
            f"{manifest.metrics.get('accuracy', float('nan')):.4f}",
            f"{manifest.metrics.get('macro_f1', float('nan')):.4f}",
            manifest.eval_fingerprint or "-",
        )
    Console().print(table)


@adapters.command("show")
def adapters_show(version: str, registry: RegistryOption) -> None:
    """A version's manifest as JSON."""
    from qcat.registry import Registry

    try:
        print(Registry(registry).show(version).model_dump_json(indent=2))
    except QcatError as error:
        raise fail(error) from error


AnnounceOption = Annotated[
    bool,
    typer.Option(
        "--announce",
        help="Tell running workers on <prefix>.adapters (broker and security from QCAT_BROKERS, QCAT_SASL_*, ...).",
    ),
]


def announce(action: Literal["promote", "rollback"], version: str, path: Path) -> None:
    """Publish the registry change on the control topic; workers swap to it between batches."""
    import asyncio

    from schemas.events import AdapterAnnouncement
    from worker.hot_swap import announce as publish
    from worker.settings import WorkerSettings

    settings = WorkerSettings()
    message = AdapterAnnouncement(action=action, version=version, path=str(path.resolve()))
    try:
        asyncio.run(publish(settings, f"{settings.topic_prefix}.adapters", message))
    except Exception as error:
        raise QcatError(
            f"the registry now points to {version}, but announcing it on {settings.brokers} failed ({error}); "
            "running workers keep their adapter until announced (re-run with --announce) or restarted"
        ) from error
    console.print(f"announced {action} of {version} on {settings.topic_prefix}.adapters")


@adapters.command("promote")
def adapters_promote(
    version: str,
    registry: RegistryOption,
    force: Annotated[bool, typer.Option(help="Promote even if worse or not comparable.")] = False,
    tolerance: Annotated[float, typer.Option(help="Allowed accuracy drop.")] = 0.005,
    announce_it: AnnounceOption = False,
) -> None:
    """Make a version current if it is at least as good as the current one on the same eval set. Exit 3 if refused."""
    from qcat.registry import Registry

    try:
        decision = Registry(registry).promote(version, force=force, tolerance=tolerance)
        console.print(decision.reason)
        if decision.promoted and announce_it:
            announce("promote", version, Registry(registry).path(version))
    except QcatError as error:
        raise fail(error) from error
    raise typer.Exit(code=0 if decision.promoted else 3)


@adapters.command("rollback")
def adapters_rollback(registry: RegistryOption, announce_it: AnnounceOption = False) -> None:
    """Point back to the version that was current before the current one."""
    from qcat.registry import Registry

    try:
        decision = Registry(registry).rollback()
        console.print(decision.reason + f"; current is now {decision.version}")
        if announce_it:
            announce("rollback", decision.version, Registry(registry).path(decision.version))
    except QcatError as error:
        raise fail(error) from error


@app.command()
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
    epochs: Annotated[int, typer.Option(help="Most epochs.")] = 5,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 32,
    learning_rate: Annotated[float, typer.Option(help="AdamW learning rate.")] = 2e-4,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and shuffling.")] = 0,
    tolerance: Annotated[float, typer.Option(help="Allowed accuracy drop on the fixed eval set.")] = 0.005,
    announce_it: AnnounceOption = False,
) -> None:
    """Retrain on base data + corrections and promote through the gate (a CronJob's command).

    Exit 0: promoted; 3: not better, the current adapter stays; anything else: an error. Last line: JSON summary.
    """
    from training.retrain import RetrainRequest
    from training.retrain import retrain as run_retrain
    from training.trainer import TrainConfig

    request = RetrainRequest(
        data=data,
        corrections=corrections,
        eval_data=eval_data,
        registry=registry,
        work=work,
        tolerance=tolerance,
        config=TrainConfig(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed),
    )
    try:
        summary = run_retrain(request, settings_from(EngineSettings, base_model=base_model, device=device))
        if summary["promoted"] and announce_it:
            from qcat.registry import Registry

            announce("promote", summary["version"], Registry(registry).path(summary["version"]))
    except QcatError as error:
        raise fail(error) from error
    console.print(summary["reason"])
    print(json.dumps(summary))
    raise typer.Exit(code=0 if summary["promoted"] else 3)
