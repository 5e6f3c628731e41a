"""The adapter registry: qcat adapters add | list | show | rollback (`promote`, which scores adapters on a gate set,
is the training package's: qcat/training/cli.py, declared in the `qcat.adapters` entry-point group)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from qcat.command_line import AnnounceOption, RegistryOption, announce, console, fail
from qcat.errors import QcatError, RegistryError
from qcat.registry import Registry

adapters = typer.Typer(no_args_is_help=True, help="The adapter registry: list, show, promote, roll back.")


@adapters.command("add")
def adapters_add(
    adapter: Annotated[Path, typer.Argument(help="A trained adapter directory.")], registry: RegistryOption
) -> None:
    """Register a trained adapter (copied; versions are immutable). Prints the version on stdout: V=$(qcat adapters
    add ...) works."""

    try:
        manifest = Registry(registry).add(adapter)
    except QcatError as error:
        raise fail(error) from error
    console.print(f"registered {manifest.version}")
    print(manifest.version)


@adapters.command("list")
def adapters_list(
    registry: RegistryOption,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per version on stdout.")] = False,
) -> None:
    """Versions, oldest first, with their metrics; the current one is marked."""

    try:
        store = Registry(registry)
        if not store.exists():
            raise RegistryError(f"no registry at {registry}: check the path, or `qcat adapters add` creates one")
        current = store.current()
        manifests, broken = store.scan()
    except QcatError as error:
        raise fail(error) from error
    for version, why in broken.items():
        console.print(f"[yellow]warning:[/] version {version} is unusable: {why}")
    if as_json:
        for manifest in manifests:
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
        table.add_column(column, no_wrap=column == "version", overflow="fold")  # a version id is copied whole
    for manifest in manifests:
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

    try:
        print(Registry(registry).show(version).model_dump_json(indent=2))
    except QcatError as error:
        raise fail(error) from error


@adapters.command("rollback")
def adapters_rollback(registry: RegistryOption, announce_it: AnnounceOption = False) -> None:
    """Point back to the version that was current before the current one."""

    try:
        decision = Registry(registry).rollback()
        console.print(decision.reason + f"; current is now {decision.version}")
        if announce_it:
            announce("rollback", decision.version, Registry(registry).path(decision.version))
    except QcatError as error:
        raise fail(error) from error
