"""The `qcat` command: thin wrappers that parse options and call one library function each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from qcat.errors import QcatError
from qcat.logs import configure_logging
from qcat.settings import EngineSettings

app = typer.Typer(no_args_is_help=True, add_completion=False, help="qcat: streaming question categorization.")
console = Console(stderr=True)

BaseModelOption = Annotated[
    str | None,
    typer.Option("--base-model", help="Hub id, local dir, .gguf file, or tiny-qwen3. [env: QCAT_BASE_MODEL]"),
]
AdapterOption = Annotated[Path | None, typer.Option("--adapter", help="Adapter directory. [env: QCAT_ADAPTER]")]


def engine_settings(**flags: Any) -> EngineSettings:
    """Environment first, flags on top: one frozen settings object per process."""
    return EngineSettings(**{key: value for key, value in flags.items() if value is not None})


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
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, bfloat16, float16, float32.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line on stdout.")] = False,
) -> None:
    """Categorize questions ad hoc with the base model (zero-shot) or an adapter."""
    from qcat.engine import Engine

    settings = engine_settings(base_model=base_model, adapter=adapter, taxonomy=taxonomy, device=device, dtype=dtype)
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
