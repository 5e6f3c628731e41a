"""Serving commands: classify, worker, broker, demo, send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from qcat.command_line import (
    AdapterOption,
    BaseModelOption,
    BrokersOption,
    DeviceOption,
    QuantizeOption,
    console,
    fail,
    settings_from,
)
from qcat.errors import QcatError, UsageError
from qcat.settings import EngineSettings

commands = typer.Typer()


@commands.command()
def classify(
    texts: Annotated[list[str], typer.Argument(help="Questions to categorize.")],
    base_model: BaseModelOption = None,
    adapter: AdapterOption = None,
    registry: Annotated[
        str | None, typer.Option(help="Without --adapter: its promoted adapter. \\[env: QCAT_REGISTRY]")
    ] = None,
    zero_shot: Annotated[
        bool | None, typer.Option("--zero-shot", help="The base model zero-shot, whatever QCAT_REGISTRY says.")
    ] = None,
    taxonomy: Annotated[Path | None, typer.Option(help="Labels for zero-shot (JSON or one per line).")] = None,
    device: DeviceOption = None,
    dtype: Annotated[str | None, typer.Option(help="auto, bfloat16, float16, float32.")] = None,
    quantize: QuantizeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line on stdout.")] = False,
) -> None:
    """Categorize questions ad hoc with an adapter (--adapter, else the registry's promoted one) or zero-shot."""
    from qcat.pytorch.engine import load_engine
    from qcat.serving import adapter_to_serve

    settings = settings_from(
        EngineSettings,
        base_model=base_model,
        adapter=adapter,
        registry=registry,
        zero_shot=zero_shot,
        taxonomy=taxonomy,
        device=device,
        dtype=dtype,
        quantize=quantize,
    )
    try:
        if zero_shot:
            settings = settings.model_copy(update={"registry": None})
        engine = load_engine(settings.model_copy(update={"adapter": adapter_to_serve(settings)}))
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
    table = Table(title=f"{engine.model_name} · {engine.adapter_version or 'zero-shot'}")
    for column in ("question", "label", "confidence", "runner-up"):
        table.add_column(column)
    for text, prediction in zip(texts, predictions, strict=True):
        runner_up = prediction.top(2)[-1]
        table.add_row(text, prediction.label, f"{prediction.confidence:.2f}", f"{runner_up[0]} {runner_up[1]:.2f}")
    Console().print(table)


def print_settings(show: bool) -> None:
    """Every QCAT_* variable the worker reads, with its default and meaning, from the settings model itself; then
    what this machine would run with the settings in force (`qcat.pytorch.plan`)."""
    if not show:
        return
    from qcat.worker.settings import WorkerSettings

    table = Table(box=None, show_header=True)
    for column in ("setting", "default", "meaning"):
        table.add_column(column)
    for name, field in sorted(WorkerSettings.model_fields.items()):
        default = "" if field.default is None or field.is_required() else str(field.default)
        table.add_row(f"QCAT_{name.upper()}", default, field.description or "")
    Console().print(table)
    try:
        settings = WorkerSettings()
        if settings.classifier == "torch":
            from qcat.pytorch.plan import describe_for

            plan = describe_for(settings.for_engine())
            console.print("\n[bold]what would run here[/] (a Qwen3 base model; others run padded passes):")
            for key, value in plan.items():
                console.print(f"  {key}: {value}")
    except QcatError as error:
        raise fail(error) from error
    raise typer.Exit


@commands.command()
def worker(
    brokers: BrokersOption = None,
    base_model: BaseModelOption = None,
    adapter: AdapterOption = None,
    quantize: QuantizeOption = None,
    topic_prefix: Annotated[str | None, typer.Option(help="Topic name prefix. \\[env: QCAT_TOPIC_PREFIX]")] = None,
    max_batch: Annotated[int | None, typer.Option(help="Most events per micro-batch. \\[env: QCAT_MAX_BATCH]")] = None,
    max_wait: Annotated[float | None, typer.Option(help="Seconds to fill a batch. \\[env: QCAT_MAX_WAIT]")] = None,
    threshold: Annotated[
        float | None,
        typer.Option(help="Below: review topic. Default: the adapter's own. \\[env: QCAT_CONFIDENCE_THRESHOLD]"),
    ] = None,
    list_settings: Annotated[
        bool,
        typer.Option(
            "--settings", callback=print_settings, is_eager=True, help="List every QCAT_* setting, then exit."
        ),
    ] = False,
) -> None:
    """Run the streaming worker (all settings: QCAT_* environment variables, `--settings` lists them)."""
    from qcat.worker.main import run_worker
    from qcat.worker.settings import WorkerSettings

    settings = settings_from(
        WorkerSettings,
        brokers=brokers,
        base_model=base_model,
        adapter=adapter,
        quantize=quantize,
        topic_prefix=topic_prefix,
        max_batch=max_batch,
        max_wait=max_wait,
        confidence_threshold=threshold,
    )
    try:
        run_worker(settings)
    except QcatError as error:
        raise fail(error) from error


@commands.command()
def broker(port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 9092) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, in memory) on loopback until Ctrl-C."""
    from qcat.worker.broker import EmbeddedBroker
    from qcat.worker.processes import stop_on_sigterm

    try:
        with stop_on_sigterm(), EmbeddedBroker(port) as running:
            console.print(f"broker listening on {running.address} (in-memory; Ctrl-C stops it)")
            running.wait()
    except KeyboardInterrupt:
        pass
    except QcatError as error:
        raise fail(error) from error


@commands.command()
def demo(
    count: Annotated[int, typer.Option(help="How many sample questions (TREC test set) to stream.")] = 60,
    rate: Annotated[float, typer.Option(help="Questions per second.")] = 20.0,
    base_model: BaseModelOption = None,
    adapter: AdapterOption = None,
    registry: Annotated[
        str | None,
        typer.Option(
            "--registry", envvar="QCAT_REGISTRY", help="Without --adapter: serve this registry's promoted one."
        ),
    ] = None,
) -> None:
    """Run broker + worker locally, stream sample questions through them and show where each one is routed."""
    from qcat.worker.demo import run_demo
    from qcat.worker.processes import stop_on_sigterm

    try:
        with stop_on_sigterm():
            code = run_demo(
                count=count, rate=rate, adapter=adapter, base_model=base_model, registry=registry, console=Console()
            )
    except KeyboardInterrupt:
        code = 130  # stopped; the broker and worker it started are stopped too
    except QcatError as error:
        raise fail(error) from error
    raise typer.Exit(code=code)


@commands.command()
def send(
    questions: Annotated[
        Path | None,
        typer.Argument(help="Questions: .jsonl with a text field, .csv with a text column, or one per line."),
    ] = None,
    question: Annotated[
        list[str] | None, typer.Option("--question", "-q", help="A question to send (repeatable), instead of a file.")
    ] = None,
    count: Annotated[int | None, typer.Option(help="How many events (cycled; default: each question once).")] = None,
    rate: Annotated[float, typer.Option(help="Events per second.")] = 10.0,
    brokers: BrokersOption = None,
) -> None:
    """Produce sample QuestionEvents to <prefix>.incoming (security from QCAT_SECURITY_PROTOCOL and friends), e.g.
    `qcat send data/trec/test.jsonl --count 100` or `qcat send -q "Who was Galileo ?"`."""
    import asyncio

    from qcat.kafka import KafkaSettings
    from qcat.worker.send import read_questions
    from qcat.worker.send import send as produce

    settings = settings_from(KafkaSettings, brokers=brokers)
    if (questions is None) == (not question):
        raise fail(UsageError("give a file of questions or --question TEXT (not both)"))
    try:
        texts = list(question) if question else read_questions(questions or Path())
        sent = asyncio.run(produce(settings, texts, rate=rate, count=count or len(texts)))
    except QcatError as error:
        raise fail(error) from error
    console.print(f"sent {sent} questions to {settings.topic_prefix}.incoming at {settings.brokers}")
