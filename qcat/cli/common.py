"""What the command modules share: option types, settings from flags on top of QCAT_* variables, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console

from qcat.errors import QcatError
from qcat.settings import EngineSettings

Settings = TypeVar("Settings", bound=EngineSettings)
console = Console(stderr=True)

BaseModelOption = Annotated[
    str | None,
    typer.Option("--base-model", help="Hub id, local dir, .gguf file, or tiny-qwen3. [env: QCAT_BASE_MODEL]"),
]
AdapterOption = Annotated[Path | None, typer.Option("--adapter", help="Adapter directory. [env: QCAT_ADAPTER]")]
DeviceOption = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, cuda:N. [env: QCAT_DEVICE]")]
# training options shared by `train` and `retrain`, so their defaults cannot drift apart
EpochsOption = Annotated[int, typer.Option(help="Most epochs (early stopping may end sooner).")]
BatchSizeOption = Annotated[int, typer.Option(help="Training batch size.")]
LearningRateOption = Annotated[float, typer.Option(help="AdamW learning rate.")]
SeedOption = Annotated[int, typer.Option(help="Seed for initialisation, shuffling and (without --eval) the split.")]
SeedsOption = Annotated[
    int,
    typer.Option(
        min=1,
        help="Train this many seeds (--seed, --seed+1, ...) on one split and keep their average (a soup): N times "
        "the training, one adapter's serving cost, more accurate than one seed (docs/training.md).",
    ),
]
CompileOption = Annotated[
    bool,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile the decoder layers: faster epochs after a one-off compile (~100 s on an H200), so it "
        "pays off on long runs.",
    ),
]
CudaGraphsOption = Annotated[
    bool,
    typer.Option(
        "--cuda-graphs/--no-cuda-graphs",
        help="Replay each full batch's decoder as CUDA graphs (CUDA only): removes the host's per-step overhead, "
        "which bounds small batches; one capture per batch width (seconds), a few GB of GPU memory each.",
    ),
]
AutocastOption = Annotated[
    bool,
    typer.Option(
        "--autocast/--no-autocast",
        help="bf16 autocast for the decoder and LoRA matmuls (CUDA only; LoRA's weights and the head stay float32). "
        "With --compile --cuda-graphs: batch-64 epochs ~14x faster than a plain loop at the same accuracy.",
    ),
]
LabelSmoothingOption = Annotated[
    float,
    typer.Option(min=0.0, max=0.5, help="Move this much of each training target to the other labels (a regulariser)."),
]
EPOCHS, BATCH_SIZE, LEARNING_RATE, LABEL_SMOOTHING = 5, 32, 2e-4, 0.1


def settings_from(kind: type[Settings], **flags: Any) -> Settings:
    """Environment first, flags given on the command line on top: one frozen settings object per process."""
    given: dict[str, Any] = {key: value for key, value in flags.items() if value is not None}
    return kind(**given)


def fail(error: QcatError) -> typer.Exit:
    console.print(f"[bold red]error:[/] {error}")
    return typer.Exit(code=2)


RegistryOption = Annotated[
    str, typer.Option("--registry", envvar="QCAT_REGISTRY", help="Registry directory, or an fsspec URL (s3://...).")
]
AnnounceOption = Annotated[
    bool,
    typer.Option(
        "--announce",
        help="Tell running workers on <prefix>.adapters (broker and security from QCAT_BROKERS, QCAT_SASL_*, ...).",
    ),
]


def announce(action: Literal["promote", "rollback"], version: str, path: Path) -> None:
    """Publish the registry change on the control topic; workers swap to it between batches."""
    from qcat.control import announce as publish
    from qcat.kafka import KafkaSettings

    topic = publish(action, version, path, KafkaSettings())
    console.print(f"announced {action} of {version} on {topic}")
