"""What the command modules share: option types, settings from flags on top of QCAT_* variables, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings
from rich.console import Console

from qcat.errors import QcatError, UsageError

Settings = TypeVar("Settings", bound=BaseSettings)
console = Console(stderr=True)

BaseModelOption = Annotated[
    str | None,
    typer.Option("--base-model", help="Hub id, local dir, .gguf file, or tiny-qwen3. \\[env: QCAT_BASE_MODEL]"),
]
AdapterOption = Annotated[Path | None, typer.Option("--adapter", help="Adapter directory. \\[env: QCAT_ADAPTER]")]
DeviceOption = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N. \\[env: QCAT_DEVICE]")]
QuantizeOption = Annotated[
    str | None,
    typer.Option("--quantize", help="Decoder precision: none, int8 (CPU) or fp8 (Hopper GPU). \\[env: QCAT_QUANTIZE]"),
]


def settings_from(kind: type[Settings], **flags: Any) -> Settings:
    """Environment first, flags given on the command line on top: one frozen settings object per process. A value
    that does not validate ends the command with one usage error naming the setting (never echoing a secret)."""
    given: dict[str, Any] = {key: value for key, value in flags.items() if value is not None}
    try:
        return kind(**given)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            name = str(item["loc"][0]) if item["loc"] else "?"
            flag = f"--{name.replace('_', '-')} or " if name in given else ""
            secret = "password" in name or "secret" in name
            value = "" if secret or "input" not in item else f", got {str(item['input'])[:60]!r}"
            problems.append(f"{flag}QCAT_{name.upper()}: {item['msg']}{value}")
        raise fail(UsageError("; ".join(problems))) from error


def fail(error: QcatError) -> typer.Exit:
    """One `error:` line and the error's exit code (docs/cli.md); raise the result `from error`."""
    console.print(f"[bold red]error:[/] {error}")
    return typer.Exit(code=error.exit_code)


RegistryOption = Annotated[
    str, typer.Option("--registry", envvar="QCAT_REGISTRY", help="Registry directory, or an fsspec URL (s3://...).")
]
AnnounceOption = Annotated[
    bool,
    typer.Option(
        "--announce",
        help="Tell running workers on <prefix>.adapters (brokers from --brokers or QCAT_BROKERS; security from "
        "QCAT_SASL_*, ...).",
    ),
]
BrokersOption = Annotated[str | None, typer.Option(help="Kafka bootstrap servers. \\[env: QCAT_BROKERS]")]


def announce(
    action: Literal["promote", "rollback", "shadow", "unshadow"],
    version: str,
    path: Path,
    sample: float | None = None,
    brokers: str | None = None,
) -> None:
    """Publish the registry change on the control topic; workers swap to it between batches (or start or stop
    scoring a candidate in shadow)."""
    from qcat.control import announce as publish
    from qcat.kafka import KafkaSettings

    topic = publish(action, version, path, settings_from(KafkaSettings, brokers=brokers), sample=sample)
    console.print(f"announced {action} of {version} on {topic}")
