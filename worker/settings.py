"""Worker settings: one frozen object per process, from `QCAT_*` variables and `qcat worker` flags."""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from qcat.settings import EngineSettings


class WorkerSettings(EngineSettings):
    """Kafka connection, topics, batching and routing, on top of the engine's model settings (same `QCAT_*`)."""

    model_config = SettingsConfigDict(env_prefix="QCAT_", frozen=True, extra="ignore")

    brokers: str = Field(default="localhost:9092", description="Comma-separated host:port list.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    app_id: str = Field(default="qcat-worker", description="Kafka consumer group id.")
    topic_prefix: str = Field(default="questions", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    partitions: int = Field(default=8, ge=1, description="Partitions of the topics the worker creates.")
    replication_factor: int = Field(default=1, ge=1)

    max_batch: int = Field(default=64, ge=1, le=4096, description="Most events per micro-batch.")
    max_wait: float = Field(default=0.05, gt=0, le=60, description="Seconds to wait to fill a micro-batch.")
    confidence_threshold: float = Field(default=0.5, ge=0, le=1, description="Below it, events go to review.")
    max_text_chars: int = Field(default=2000, ge=1, le=10_000, description="Longer questions are dead-lettered.")

    registry: str | None = Field(
        default=None,
        description="Adapter registry (a directory, or an fsspec URL such as s3://bucket/qcat): its current version is "
        "served at start, announced versions resolve in it.",
    )
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
    classifier: str | None = Field(
        default=None,
        description="Serve `module:factory` (called with these settings, returns a Classifier) instead of the engine.",
    )
    event_loop: Literal["asyncio", "uvloop"] = Field(
        default="uvloop", description="uvloop runs Faust's per-message path ~20% faster (bench/pipeline.py)."
    )
    web_port: int = Field(default=6066, ge=0, le=65535, description="Metrics and health endpoints.")
    web_host: str = Field(
        default="127.0.0.1",
        description="Address the metrics and health endpoints listen on: 0.0.0.0 in a container (the image sets it) "
        "so that probes and Prometheus reach them.",
    )
    session_timeout: float = Field(default=30.0, gt=0, description="Kafka consumer session timeout, seconds.")
    log_json: bool = True
    log_text: bool = Field(default=False, description="Include question text in logs (off: privacy).")
    log_level: str = "INFO"

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        context = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.ssl_certfile:
            context.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None)
        return context

    def kafka_client_options(self) -> dict[str, Any]:
        """The same connection options as keyword arguments for aiokafka clients (tools, tests, the demo)."""
        options: dict[str, Any] = {"bootstrap_servers": self.brokers, "security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            options |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            }
        if (context := self.ssl_context()) is not None:
            options["ssl_context"] = context
        return options
