"""The `qcat` command: the top of the import layers. It assembles the runtime's own commands (the adapter registry,
qcat/registry_cli.py) and whatever the packages built on the runtime declare in the `qcat.commands` entry-point group
(`qcat.worker.cli`, `qcat.training.cli`), so nothing below imports those packages."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated, Any

import typer
from typer.core import TyperOption

from qcat import __version__
from qcat.logs import configure_logging
from qcat.registry_cli import adapters


def _flags_without_types() -> None:
    """Typer's help gives every option's type, a flag's too (`<bool>` after `--help` and every switch); a flag takes
    no value, so its type column stays empty."""
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None:  # a Typer before the typed help column: nothing to hide
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_types()
app = typer.Typer(no_args_is_help=True, add_completion=False, help="qcat: streaming question categorization.")
for point in sorted(entry_points(group="qcat.commands"), key=lambda point: point.name):
    app.add_typer(point.load())
for point in sorted(entry_points(group="qcat.adapters"), key=lambda point: point.name):
    adapters.command(point.name)(point.load())  # registry commands that need a package (promote scores adapters)
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
