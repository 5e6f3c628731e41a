"""The adapter registry: qcat adapters add | list | show | rollback | shadow | compare. `promote`, which scores
adapters on a gate set, is the training package's (qcat/training/cli.py, declared in the `qcat.adapters` entry-point
group)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from qcat.command_line import AnnounceOption, BrokersOption, RegistryOption, announce, console, fail, settings_from
from qcat.errors import QcatError, RegistryError, UsageError
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
def adapters_rollback(
    registry: RegistryOption, announce_it: AnnounceOption = False, brokers: BrokersOption = None
) -> None:
    """Point back to the version that was current before the current one."""

    try:
        decision = Registry(registry).rollback()
        console.print(decision.reason + f"; current is now {decision.version}")
        if announce_it:
            announce("rollback", decision.version, Registry(registry).path(decision.version), brokers=brokers)
    except QcatError as error:
        raise fail(error) from error


@adapters.command("shadow")
def adapters_shadow(
    registry: RegistryOption,
    version: Annotated[str | None, typer.Argument(help="A registered version (omit with --stop).")] = None,
    sample: Annotated[
        float, typer.Option(min=0.0001, max=1.0, help="The share of events it scores beside the serving adapter.")
    ] = 1.0,
    stop: Annotated[bool, typer.Option("--stop", help="Take the candidate out of shadow.")] = False,
    announce_it: AnnounceOption = False,
    brokers: BrokersOption = None,
) -> None:
    """Score a registered candidate on live events beside the serving adapter, without changing any route: workers
    publish its disagreements and its answers to corrections on <prefix>.shadow (`adapters compare` reads them)."""
    from qcat.shadow import set_shadow

    if (version is None) != stop:
        raise fail(UsageError("give a VERSION to put in shadow, or --stop to take the shadow away"))
    try:
        store = Registry(registry)
        if stop:
            set_shadow(store, None)
            console.print("no candidate in shadow")
        else:
            assert version is not None
            set_shadow(store, version, sample)
            console.print(f"{version} in shadow on {sample:.0%} of events")
        if announce_it:
            name = version or "none"
            path = store.path(version) if version else Path(registry)
            announce("unshadow" if stop else "shadow", name, path, sample=None if stop else sample, brokers=brokers)
    except QcatError as error:
        raise fail(error) from error


@adapters.command("compare")
def adapters_compare(
    version: Annotated[str, typer.Argument(help="The candidate that ran in shadow.")],
    registry: RegistryOption,
    report: Annotated[Path | None, typer.Option(help="Also write compare.json and compare.png there.")] = None,
    brokers: BrokersOption = None,
) -> None:
    """What shadow scoring showed (from <prefix>.shadow, QCAT_BROKERS): agreement with the serving adapter, the
    label flips, each adapter's accuracy on the corrections that arrived; kept in the registry as the evidence
    `adapters promote --require-shadow-events/--require-shadow-corrections` checks."""
    from qcat.kafka import KafkaSettings
    from qcat.shadow import keep_evidence, plot, read_records, summarize

    try:
        store = Registry(registry)
        store.show(version)
        evidence = summarize(read_records(settings_from(KafkaSettings, brokers=brokers)), version)
        keep_evidence(store, evidence)
    except QcatError as error:
        raise fail(error) from error
    total = max(evidence["corrections"], 1)
    agreement = "-" if evidence["agreement"] is None else f"{evidence['agreement']:.1%}"
    console.print(
        f"{version} in shadow: {evidence['events']} events scored, agreement {agreement}; "
        f"{evidence['corrections']} corrections: candidate {evidence['candidate_correct'] / total:.1%} right, "
        f"serving {evidence['serving_correct'] / total:.1%}"
    )
    for flip in evidence["flips"][:5]:
        console.print(f"  {flip['serving']} -> {flip['candidate']}: {flip['events']} events")
    if report is not None:
        report.mkdir(parents=True, exist_ok=True)
        (report / "compare.json").write_text(json.dumps(evidence, indent=2) + "\n", encoding="utf-8")
        plot(evidence, report / "compare.png")
    print(json.dumps(evidence))
