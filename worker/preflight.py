"""Fail fast and say why: connect to Kafka with the worker's settings before loading the model.

Without this, a wrong password or CA surfaces minutes later, deep inside Faust, as a traceback (aiokafka reports a
rejected SCRAM login as `KeyError: 'v'`). The message names the brokers, protocol, mechanism and user, never the
password, and the settings to check.
"""

from __future__ import annotations

import asyncio
import ssl

from aiokafka.admin import AIOKafkaAdminClient

from qcat.errors import KafkaError
from qcat.worker.settings import WorkerSettings

TIMEOUT_S = 20.0


async def check_kafka(settings: WorkerSettings, timeout: float = TIMEOUT_S) -> None:
    admin = AIOKafkaAdminClient(**settings.kafka_client_options(), request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        await asyncio.wait_for(admin.describe_cluster(), timeout)
    except Exception as error:
        raise KafkaError(explain(settings, error), brokers=settings.brokers) from error
    finally:
        await admin.close()


def explain(settings: WorkerSettings, error: BaseException) -> str:
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
    return f"cannot connect to Kafka at {settings.brokers} over {how}: {detail[:500]}. Check " + "; ".join(hints)
