"""The `qcat` command. Serving, training and the adapter registry each have a module; this one assembles them."""

from __future__ import annotations

from typing import Annotated

import typer

from qcat.cli import adapters, serving, training
from qcat.logs import configure_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, help="qcat: streaming question categorization.")
app.add_typer(serving.commands)
app.add_typer(training.commands)
app.add_typer(adapters.adapters, name="adapters")


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")] = False) -> None:
    configure_logging(json=False, level="DEBUG" if verbose else "INFO")
