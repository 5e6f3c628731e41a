"""Run a worker process: load the model first (readiness), then hand the app to Faust's worker."""

from __future__ import annotations

import faust

from qcat.engine import Engine
from qcat.logs import configure_logging
from worker.app import create_app
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings


def run_worker(settings: WorkerSettings) -> None:
    configure_logging(json=settings.log_json, level=settings.log_level)
    engine = Engine.load(settings)
    app = create_app(settings, engine, WorkerMetrics())
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()
