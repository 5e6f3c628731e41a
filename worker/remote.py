"""A front-end's classifier (`QCAT_CLASSIFIER=remote`, set by the supervisor): the engine's host work here, its
passes in the pod's engine core (`worker.engine_core`).

It is the engine itself (`qcat.engine.Engine`: encoding, truncation, the finite check, temperature, softmax,
predictions, the open-set distance's column) over a scorer that sends a micro-batch's token rows to the core in one
request and gets its logits back; tokenizing uses the core's tokenizer, sent once as JSON, so a front-end loads no
model and no torch. One connection per process, shared by the serving adapter, a hot swap's loader thread and a
shadow candidate: a reader thread hands each answer to whoever asked. If the core goes away the front-end exits at
once (status `CORE_GONE`): its unacknowledged events are redelivered, and the supervisor restarts the pod.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from typing import Any

import numpy as np
import structlog
from tokenizers import Tokenizer

from qcat.engine import Engine
from qcat.errors import UnavailableError, UsageError
from qcat.settings import EngineSettings
from qcat.worker.engine_core import Served

log = structlog.get_logger(__name__)
CORE_GONE = 75
"""A front-end's exit status when its engine core stopped answering (EX_TEMPFAIL)."""
UNBOUNDED = 1 << 30
"""The front-end's own pass budget: one request per micro-batch; the core cuts it into passes by its plan."""


class CoreClient:
    """This process's connection to the engine core."""

    def __init__(self, address: str, key: bytes) -> None:
        try:
            self.connection = Client(address, family="AF_UNIX", authkey=key)
        except (OSError, AuthenticationError) as error:
            raise UnavailableError(f"cannot reach the engine core at {address}: {error}") from error
        self.sending = threading.Lock()
        self.waiting: dict[Any, Future[Any]] = {}
        self.ids = itertools.count()
        threading.Thread(target=self._read, daemon=True, name="core-client").start()

    def _ask(self, key: Any, message: tuple[Any, ...]) -> Any:
        future: Future[Any] = Future()
        with self.sending:
            self.waiting[key] = future
            self.connection.send(message)
        return future.result()

    def load(self, adapter: str | None) -> Served:
        answer: Served = self._ask(("load", adapter), ("load", adapter))
        return answer

    def score(self, adapter: str | None, rows: Sequence[Sequence[int]]) -> np.ndarray:
        request = next(self.ids)
        lengths = np.fromiter(map(len, rows), dtype=np.int32, count=len(rows))
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(lengths.sum()))
        logits: np.ndarray = self._ask(("score", request), ("score", request, adapter, flat, lengths))
        return logits

    def _read(self) -> None:
        try:
            while True:
                kind, key, value = self.connection.recv()
                future = self.waiting.pop(("load" if kind in ("loaded", "failed-load") else "score", key))
                if kind in ("failed", "failed-load"):
                    future.set_exception(RuntimeError(f"the engine core failed: {value}"))
                else:
                    future.set_result(value)
        except (EOFError, OSError):
            log.error("the engine core is gone; exiting so that the pod restarts (unacked events are redelivered)")
            os._exit(CORE_GONE)


_client: CoreClient | None = None
_client_lock = threading.Lock()


def client(address: str, key: bytes) -> CoreClient:
    global _client  # noqa: PLW0603 - one connection per process, made on first use
    with _client_lock:
        if _client is None:
            _client = CoreClient(address, key)
        return _client


class RemoteScorer:
    """A micro-batch's rows in one request; the core chooses the passes."""

    pads = False

    def __init__(self, core: CoreClient, adapter: str | None) -> None:
        self.core, self.adapter = core, adapter

    def __call__(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        return self.core.score(self.adapter, rows)


class TokenizerOnly:
    """What the engine asks of a tokenizer, from its JSON alone (no transformers, no model files)."""

    def __init__(self, serialized: str) -> None:
        self.backend_tokenizer = Tokenizer.from_str(serialized)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}


class RemoteEngine(Engine):
    """The engine whose passes run in the core; it prefers the core's micro-batch."""

    def __init__(self, served: Served, scorer: RemoteScorer) -> None:
        super().__init__(
            TokenizerOnly(served.tokenizer),
            served.spec,
            scorer,
            model_name=served.model_name,
            batch_size=UNBOUNDED,
            batch_tokens=UNBOUNDED,
        )
        self._preferred = served.preferred_batch

    @property
    def preferred_batch(self) -> int:
        return self._preferred


def remote_classifier(settings: EngineSettings) -> RemoteEngine:
    """`QCAT_CLASSIFIER=remote`: the engine of `settings.adapter` in the core at `QCAT_ENGINE_SOCKET`."""
    address, key = getattr(settings, "engine_socket", None), getattr(settings, "engine_key", None)
    if not address or key is None:
        raise UsageError(
            "QCAT_CLASSIFIER=remote needs QCAT_ENGINE_SOCKET and QCAT_ENGINE_KEY (qcat worker sets them for its "
            "front-ends)"
        )
    adapter = str(settings.adapter) if settings.adapter is not None else None
    core = client(address, bytes.fromhex(key.get_secret_value()))
    return RemoteEngine(core.load(adapter), RemoteScorer(core, adapter))
