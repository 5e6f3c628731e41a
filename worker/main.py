"""Run a worker process: load the model first (readiness), then hand the app to Faust's worker."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faust
import mode.loop
import structlog

from qcat.classifier import Classifier, load_classifier
from qcat.errors import UnavailableError
from qcat.kafka import check_kafka
from qcat.logs import configure_logging
from qcat.serving import adapter_to_serve
from qcat.worker.app import create_app
from qcat.worker.broker import ensure_free
from qcat.worker.metrics import WorkerMetrics
from qcat.worker.settings import GPU_FRONTENDS, WorkerSettings


def warmed_up(settings: WorkerSettings) -> Classifier:
    """Loaded (by the backend `QCAT_CLASSIFIER` names), then one full micro-batch: kernel selection and allocator
    warm-up happen here, not on a real batch."""
    classifier = load_classifier(settings.for_engine())
    classifier.classify(["What is a warm-up question ?"] * (settings.max_batch or classifier.preferred_batch))
    settle_garbage()
    return classifier


def settle_garbage() -> None:
    """Collect once, then exempt what survives (the libraries, the model) from later collections.

    Python's full collection walks every object the process holds: with torch, transformers and a model loaded it
    holds the GIL long enough to stall the event loop and the inference thread at whatever moment it falls on, part
    of the GPU worker's latency tail (docs/worker.md, "On a GPU"). Frozen objects are never walked again; later
    collections see only what batches allocate. Unfrozen first, so that the engine a hot swap
    replaces is collected at the next swap: one pause per swap instead of one every few thousand batches.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def start_inference(settings: WorkerSettings) -> tuple[ThreadPoolExecutor, Classifier]:
    """The one thread that loads, warms up and then runs the model.

    torch's OpenMP worker threads belong to the thread that starts them: a warm-up on the main thread would leave a
    second team behind, GNU OpenMP then counts more threads than cores and throttles its spin-waits, and every batch
    runs slower (measured in docs/worker.md).
    """
    inference = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qcat-inference")
    return inference, inference.submit(warmed_up, settings).result()


def use_event_loop(name: str) -> None:
    """uvloop moves more events/s through Faust's per-message path (docs/worker.md); it is a speed-up, not a
    requirement, so a platform without it (Windows) runs on asyncio's loop with a warning."""
    if name != "uvloop":
        return
    try:
        mode.loop.use("uvloop")
    except ImportError:
        structlog.get_logger(__name__).warning(
            "uvloop is not installed: running on asyncio's event loop",
            fix="pip install uvloop, or QCAT_EVENT_LOOP=asyncio",
        )


def on_gpu(settings: WorkerSettings) -> bool:
    """Whether the PyTorch backend would run on a GPU (`QCAT_DEVICE`); other backends run where they run."""
    if settings.classifier != "torch":
        return False
    from qcat.pytorch.model import resolve_device

    return resolve_device(settings.device).type == "cuda"


def run_worker(settings: WorkerSettings) -> None:
    configure_logging(json=settings.log_json, level=settings.log_level)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UnavailableError(f"cannot create QCAT_DATA_DIR {settings.data_dir}: {error}") from error
    use_event_loop(settings.event_loop)
    ensure_free(settings.web_host, settings.web_port, "the web port (QCAT_WEB_PORT)")  # before minutes of loading
    asyncio.run(check_kafka(settings))
    if settings.adapter is None:
        settings = settings.model_copy(update={"adapter": adapter_to_serve(settings)})
        structlog.get_logger(__name__).info("serving", adapter=settings.adapter.name if settings.adapter else None)
    frontends = settings.frontends or (GPU_FRONTENDS if on_gpu(settings) else 1)
    if frontends > 1:
        from qcat.worker.supervisor import run_pod

        raise SystemExit(run_pod(settings, frontends))
    inference, classifier = start_inference(settings)

    def load(adapter: Path) -> Classifier:
        return warmed_up(settings.model_copy(update={"adapter": adapter}))

    app = create_app(settings, classifier, WorkerMetrics(), load=load, inference=inference)
    worker = QcatWorker(
        app,
        stop_timeout=settings.stop_timeout,
        loglevel=settings.log_level.lower(),
        redirect_stdouts=False,
        override_logging=False,
        quiet=True,
    )
    worker.execute_from_commandline()


STOP_DEADLINE_EXIT = 70
"""Exit status when the worker outlived `stop_timeout` after a signal (EX_SOFTWARE)."""


class QcatWorker(faust.Worker):
    """Faust's worker with two changes: its terminal spinner is off (it wrote escape codes into the JSON log), and a
    stop signal arms a deadline. Faust's own shutdown waits on the broker (commits, leaving the group) for up to its
    request timeouts, longer than an orchestrator's grace period when the broker hangs; past `stop_timeout` the
    process exits anyway. That is safe: offsets are committed only for published events, so the rest are
    redelivered."""

    def __init__(self, *args: Any, stop_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None
        self._stop_timeout = stop_timeout
        self._deadline: threading.Timer | None = None

    def _arm_deadline(self) -> None:
        if self._deadline is None:
            self._deadline = threading.Timer(self._stop_timeout, _exit_at_deadline, args=(self._stop_timeout,))
            self._deadline.daemon = True
            self._deadline.start()

    def _on_sigterm(self) -> None:
        self._arm_deadline()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._arm_deadline()
        super()._on_sigint()


def _exit_at_deadline(seconds: float) -> None:
    structlog.get_logger(__name__).error(
        "the worker did not stop in time; exiting now (unacknowledged events are redelivered)", stop_timeout_s=seconds
    )
    os._exit(STOP_DEADLINE_EXIT)
