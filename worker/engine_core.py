"""The engine core: the one process of a pod that owns the GPU. Front-end worker processes (Kafka, decoding,
tokenizing, predictions, publishing; `worker.remote`) send it token rows; it batches what every front-end sent into
as few passes as the serving plan allows and sends back each request's logits.

Why: one worker process is held by its host work, not by the GPU (docs/worker.md, "One pod per GPU"), and several
worker processes each with a model take turns on the GPU. Here the host work runs in several processes beside the
GPU, and one CUDA context runs every pass, batched across them (as vLLM's engine core does for its front-ends).

Protocol (`multiprocessing.connection` over a Unix socket, one connection per front-end): `("load", adapter)` loads
that adapter (a path, or None for zero-shot) once, however many front-ends ask, and answers `("loaded", Served)`;
`("score", request_id, adapter, flat, lengths)` answers `("scores", request_id, logits)` or `("failed", request_id,
reason)`. Engines stay loaded for the last few adapters asked for (serving, the previous one during a swap, a
shadow candidate).
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from qcat.classifier import load_classifier
from qcat.engine import Engine, EngineSpec
from qcat.logs import configure_logging
from qcat.worker.settings import WorkerSettings

log = structlog.get_logger(__name__)
KEEP_ENGINES = 3
"""Engines kept loaded: the serving adapter, the previous one while front-ends swap, a shadow candidate."""


@dataclass(frozen=True)
class Served:
    """What a front-end needs to run an engine's host work itself: the prompt, labels and policy, and the tokenizer."""

    spec: EngineSpec
    tokenizer: str
    """The tokenizer's JSON (`tokenizers.Tokenizer.to_str`)."""
    model_name: str
    preferred_batch: int


class Engines:
    """Engines by adapter, loaded once each (a loader thread per request; the same adapter waits for the first)."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.loaded: OrderedDict[str | None, Engine] = OrderedDict()
        self.lock = threading.Lock()
        self.loading: dict[str | None, threading.Lock] = {}

    def get(self, adapter: str | None) -> Engine:
        with self.lock:
            gate = self.loading.setdefault(adapter, threading.Lock())
        with gate:
            with self.lock:
                if adapter in self.loaded:
                    self.loaded.move_to_end(adapter)
                    return self.loaded[adapter]
            settings = self.settings.model_copy(update={"adapter": Path(adapter) if adapter else None})
            engine = load_classifier(settings.for_engine())
            if not isinstance(engine, Engine):
                raise TypeError(f"the {self.settings.classifier} backend is not an engine: it cannot run as a core")
            engine.classify(["What is a warm-up question ?"] * engine.preferred_batch)
            with self.lock:
                self.loaded[adapter] = engine
                while len(self.loaded) > KEEP_ENGINES:
                    self.loaded.popitem(last=False)
            return engine


def served(engine: Engine) -> Served:
    return Served(engine.spec, engine.tokenizer.backend_tokenizer.to_str(), engine.model_name, engine.preferred_batch)


class Core:
    def __init__(self, settings: WorkerSettings, address: str, key: bytes) -> None:
        self.engines = Engines(settings)
        self.address, self.key = address, key
        self.requests: queue.Queue[tuple[Connection, Any]] = queue.Queue()
        self.senders: dict[int, threading.Lock] = {}
        self.most_rows = 4 * (settings.max_batch or 512)

    def send(self, connection: Connection, message: Any) -> None:
        with self.senders.setdefault(id(connection), threading.Lock()):
            connection.send(message)

    def serve(self) -> None:
        """Accept front-ends for ever; each gets a reader thread; this thread batches and runs the passes."""
        # the socket's folder is its user's alone; the key keeps out any other process of that user too, since the
        # channel carries pickles
        listener = Listener(self.address, family="AF_UNIX", authkey=self.key)
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="core-accept").start()
        log.info("engine core listening", address=self.address)
        while True:
            self._run_batch()

    def _accept(self, listener: Listener) -> None:
        while True:
            try:
                connection = listener.accept()
            except (AuthenticationError, EOFError, OSError) as error:
                log.warning("engine core refused a connection", error=f"{type(error).__name__}: {error}")
                continue
            threading.Thread(target=self._read, args=(connection,), daemon=True, name="core-read").start()

    def _read(self, connection: Connection) -> None:
        try:
            while True:
                message = connection.recv()
                if message[0] == "load":
                    threading.Thread(target=self._load, args=(connection, message[1]), daemon=True).start()
                else:
                    self.requests.put((connection, message))
        except (EOFError, OSError):
            log.info("a front-end disconnected")

    def _load(self, connection: Connection, adapter: str | None) -> None:
        try:
            self.send(connection, ("loaded", adapter, served(self.engines.get(adapter))))
        except Exception as error:  # noqa: BLE001 - the front-end raises it where it asked
            self.send(connection, ("failed-load", adapter, f"{type(error).__name__}: {error}"))

    def _run_batch(self) -> None:
        """The first waiting request, and every other waiting one for the same adapter, in one call of its engine."""
        batch = [self.requests.get()]
        adapter, rows = batch[0][1][2], len(batch[0][1][4])
        held = []
        while rows < self.most_rows:
            try:
                item = self.requests.get_nowait()
            except queue.Empty:
                break
            if item[1][2] == adapter:
                batch.append(item)
                rows += len(item[1][4])
            else:
                held.append(item)
        for item in held:
            self.requests.put(item)
        try:
            engine = self.engines.get(adapter)
            rows_of = [np.split(message[3], np.cumsum(message[4])[:-1]) for _, message in batch]
            logits = engine.logits([row.tolist() for rows in rows_of for row in rows])
        except Exception as error:  # noqa: BLE001 - each front-end falls back as for any failed pass
            for connection, message in batch:
                self.send(connection, ("failed", message[1], f"{type(error).__name__}: {error}"))
            return
        start = 0
        for connection, message in batch:
            count = len(message[4])
            self.send(connection, ("scores", message[1], logits[start : start + count]))
            start += count


def run_core(settings: WorkerSettings, address: str, key: bytes) -> None:
    """The core process's entry point (`qcat worker` starts it when it runs front-ends: worker/supervisor.py)."""
    configure_logging(json=settings.log_json, level=settings.log_level)
    Core(settings, address, key).serve()
