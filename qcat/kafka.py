"""Kafka connection settings, the connection check, and the one place aiokafka's errors become qcat's, shared by
the worker, `qcat send` and every command that announces adapters: one frozen settings object per process.

The check fails fast and says why: without it, a wrong password or CA surfaces minutes later, deep inside Faust, as
a traceback (aiokafka reports a rejected SCRAM login as `KeyError: 'v'`). `kafka_errors` maps whatever a Kafka client
raises (aiokafka's errors, the network's, a TLS failure, that `KeyError`) to one `KafkaError` whose message names
what failed, the brokers, protocol, mechanism and user, never the password, and the settings to check.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from aiokafka.admin import AIOKafkaAdminClient
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from qcat.errors import KafkaError

CHECK_TIMEOUT = 20.0


class KafkaSettings(BaseSettings):
    """Where Kafka is, how to log in, and the topics' shared prefix."""

    model_config = SettingsConfigDict(env_prefix="QCAT_", frozen=True, extra="ignore")

    brokers: str = Field(default="localhost:9092", description="Comma-separated host:port list.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", description="How to reach the brokers: PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN", description="SASL login mechanism."
    )
    sasl_username: str | None = Field(default=None, description="SASL user.")
    sasl_password: SecretStr | None = Field(default=None, description="SASL password (a secret: never logged).")
    ssl_cafile: Path | None = Field(default=None, description="CA certificate(s) that sign the brokers' certificates.")
    ssl_certfile: Path | None = Field(default=None, description="This client's certificate, for mutual TLS.")
    ssl_keyfile: Path | None = Field(default=None, description="This client's private key, for mutual TLS.")
    topic_prefix: str = Field(
        default="questions", pattern=r"^[A-Za-z0-9._-]{1,100}$", description="Every topic's name starts with it."
    )
    replication_factor: int = Field(default=1, ge=1, description="Replicas of the topics qcat creates.")

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        context = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.ssl_certfile:
            context.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None)
        return context

    def kafka_client_options(self) -> dict[str, Any]:
        """The connection options as keyword arguments for aiokafka clients."""
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


@contextmanager
def kafka_errors(settings: KafkaSettings, doing: str, consequence: str = "") -> Iterator[None]:
    """Any error a Kafka client raises inside the block, as one `KafkaError`: `doing` says what failed ("cannot
    connect to", "cannot announce v3 on"), `consequence` what it leaves behind."""
    try:
        yield
    except KafkaError:
        raise
    except Exception as error:
        raise KafkaError(explain(settings, error, doing) + consequence) from error


async def check_kafka(settings: KafkaSettings, timeout: float = CHECK_TIMEOUT) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka_client_options(), request_timeout_ms=int(timeout * 1000))
    try:
        with kafka_errors(settings, "cannot connect to"):
            await asyncio.wait_for(admin.start(), timeout)
            await asyncio.wait_for(admin.describe_cluster(), timeout)
    finally:
        await admin.close()


def explain(settings: KafkaSettings, error: BaseException, doing: str) -> str:
    how: str = settings.security_protocol
    if how.startswith("SASL"):
        how += f" {settings.sasl_mechanism} as {settings.sasl_username!r}"
    cause = error.__cause__ or error.__context__
    detail = f"{type(error).__name__}: {error}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
    hints = ["QCAT_BROKERS and the network"]
    if settings.security_protocol in ("SSL", "SASL_SSL") or isinstance(cause, ssl.SSLError):
        hints.insert(0, "the broker's certificate against QCAT_SSL_CAFILE (and QCAT_SSL_CERTFILE/KEYFILE for mTLS)")
    if settings.security_protocol.startswith("SASL"):
        hints.insert(0, "QCAT_SASL_USERNAME, QCAT_SASL_PASSWORD and QCAT_SASL_MECHANISM (authentication failed?)")
    return f"{doing} Kafka at {settings.brokers} over {how}: {detail[:500]}. Check " + "; ".join(hints)
