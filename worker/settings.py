"""Worker settings: one frozen object per process, from `QCAT_*` variables and `qcat worker` flags."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from qcat.kafka import KafkaSettings
from qcat.settings import CPU_MAX_BATCH, GPU_MAX_BATCH, EngineSettings

GPU_FRONTENDS = 4
"""Front-end processes per GPU when QCAT_FRONTENDS is unset: what it took for the host work to keep up with the
engine (docs/worker.md, "One pod per GPU")."""


class WorkerSettings(EngineSettings, KafkaSettings):
    """Batching, routing, adapters and operations, on top of the engine's model settings and the Kafka connection
    (all `QCAT_*`)."""

    model_config = SettingsConfigDict(env_prefix="QCAT_", frozen=True, extra="ignore")

    app_id: str = Field(default="qcat-worker", description="Kafka consumer group id.")
    partitions: int = Field(default=8, ge=1, description="Partitions of the topics the worker creates.")

    max_batch: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description=f"Most events per micro-batch (unset: the engine's forward pass, {GPU_MAX_BATCH} on a GPU and "
        f"{CPU_MAX_BATCH} on a CPU); also the largest forward pass unless QCAT_BATCH_SIZE is set.",
    )
    max_wait: float = Field(default=0.05, gt=0, le=60, description="Seconds to wait to fill a micro-batch.")
    frontends: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description=f"Worker processes feeding one engine process that owns the GPU (unset: {GPU_FRONTENDS} on a GPU, "
        "1 on a CPU, where one process runs everything).",
    )
    engine_socket: str | None = Field(
        default=None, description="Where a front-end reaches its pod's engine core (set by qcat worker for them)."
    )
    engine_key: SecretStr | None = Field(
        default=None, description="The key a front-end proves to its engine core (set by qcat worker for them)."
    )
    fetch_max_wait: float = Field(
        default=0.05,
        gt=0,
        le=10,
        description="Seconds an empty fetch waits on the broker. Kafka answers as soon as an event arrives; a broker "
        "that holds each fetch for the whole wait (the embedded one) adds it to an event's latency at low load.",
    )
    confidence_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Below it, events go to review. Default: the serving adapter's own threshold (chosen when it was "
        "trained, switched with it on a hot swap), 0.5 for an adapter without one and for zero-shot.",
    )
    max_text_chars: int = Field(default=2000, ge=1, le=10_000, description="Longer questions are dead-lettered.")

    registry_poll_interval: float = Field(
        default=30.0,
        gt=0,
        description="Seconds between checks of the registry's current version (missed announcements).",
    )
    serve_adapters: Literal["promoted", "registered"] = Field(
        default="promoted",
        description="Announced versions a worker loads: `promoted` only the registry's current one (what promote or "
        "rollback last pointed to); `registered` any version in the registry.",
    )
    announced_paths: bool = Field(
        default=False,
        description="Also load an announced adapter from the path in its announcement when no registry holds it. Off: "
        "anyone who can write to the control topic could make workers serve weights of their choosing.",
    )
    corrections_dir: Path = Field(
        default=Path("qcat-data/corrections"), description="Where validated corrections are stored (JSON Lines)."
    )
    refused_dir: Path = Field(
        default=Path("qcat-data/refused"),
        description="Where records the broker refuses for good, dead letters included, are kept (JSON Lines).",
    )
    stop_timeout: float = Field(
        default=25.0, gt=0, description="Seconds from SIGTERM to exit, at the latest (Kubernetes waits 30 by default)."
    )
    publish_stall_timeout: float = Field(
        default=60.0, gt=0, description="Readiness fails while a batch's outputs have waited this long for the broker."
    )
    data_dir: Path = Field(
        default=Path(tempfile.gettempdir()) / "qcat-worker", description="Faust's local state (nothing durable)."
    )
    event_loop: Literal["asyncio", "uvloop"] = Field(
        default="uvloop", description="uvloop runs Faust's per-message path faster (docs/worker.md)."
    )
    web_port: int = Field(default=6066, ge=0, le=65535, description="Metrics and health endpoints.")
    web_host: str = Field(
        default="127.0.0.1",
        description="Address the metrics and health endpoints listen on: 0.0.0.0 in a container (the image sets it) "
        "so that probes and Prometheus reach them.",
    )
    session_timeout: float = Field(default=30.0, gt=0, description="Kafka consumer session timeout, seconds.")
    log_json: bool = Field(default=True, description="JSON log lines (false: lines for people).")
    log_text: bool = Field(default=False, description="Include question text in logs (off: privacy).")
    log_level: str = Field(default="INFO", description="DEBUG adds each batch's event ids.")

    def for_engine(self) -> WorkerSettings:
        """The settings the worker's classifier loads with: a long-running server, whose forward pass takes a whole
        micro-batch when QCAT_MAX_BATCH is set and QCAT_BATCH_SIZE is not."""
        batch_size = self.batch_size or self.max_batch
        return self.model_copy(update={"serving": True, "batch_size": batch_size})

    def with_micro_batch(self, preferred: int) -> WorkerSettings:
        """QCAT_MAX_BATCH, or when unset the micro-batch the loaded classifier prefers (its forward pass)."""
        return self if self.max_batch is not None else self.model_copy(update={"max_batch": preferred})

    @property
    def micro_batch(self) -> int:
        """QCAT_MAX_BATCH once resolved (`with_micro_batch`)."""
        if self.max_batch is None:
            raise ValueError("the micro-batch is resolved once the classifier is loaded (with_micro_batch)")
        return self.max_batch
