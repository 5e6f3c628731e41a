"""The `qcat` command. The runtime's own commands (the adapter registry) are here; the worker's and training's
commands are in those packages (`qcat.worker.cli`, `qcat.training.cli`), which declare them in the `qcat.commands`
entry-point group, so the runtime never imports the packages built on it."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated

import typer

from qcat import __version__
from qcat.cli.adapters import adapters
from qcat.logs import configure_logging

app = typer.Typer(no_args_is_help=True, add_completion=False, help="qcat: streaming question categorization.")
for point in sorted(entry_points(group="qcat.commands"), key=lambda point: point.name):
    app.add_typer(point.load())
app.add_typer(adapters, name="adapters")


def show_version(show: bool) -> None:
    if show:
        print(f"qcat {__version__}")
        raise typer.Exit


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=show_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    configure_logging(json=False, level="DEBUG" if verbose else "INFO")
