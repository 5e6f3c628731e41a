"""Run a worker process: load the model first (readiness), then hand the app to Faust's worker."""

from __future__ import annotations

import importlib

import faust

from qcat.engine import Engine
from qcat.errors import QcatError
from qcat.logs import configure_logging
from worker.app import create_app
from worker.classifier import Classifier
from worker.metrics import WorkerMetrics
from worker.settings import WorkerSettings


def load_classifier(settings: WorkerSettings) -> Classifier:
    """The engine, or the factory named by `settings.classifier` (custom models, benchmarks, fault tests)."""
    if settings.classifier is None:
        return Engine.load(settings)
    module_name, _, attribute = settings.classifier.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise QcatError(f"QCAT_CLASSIFIER={settings.classifier!r} is not an importable module:factory") from error
    classifier: Classifier = factory(settings)
    return classifier


def run_worker(settings: WorkerSettings) -> None:
    configure_logging(json=settings.log_json, level=settings.log_level)
    classifier = load_classifier(settings)
    # One full batch before joining the group: kernel selection and allocator warm-up happen here, not on the
    # first real batch, and readiness means ready to serve at speed.
    classifier.classify(["What is a warm-up question ?"] * settings.max_batch)
    app = create_app(settings, classifier, WorkerMetrics())
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()
