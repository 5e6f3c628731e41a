"""The real broker, once per session: a Tansu process on a free loopback port. If it cannot start, tests FAIL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qcat.worker.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    running = EmbeddedBroker()
    running.start(timeout=30)
    try:
        yield running.address
    finally:
        running.stop()
