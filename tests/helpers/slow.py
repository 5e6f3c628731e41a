"""A classifier slower per batch than the consumer session timeout (QCAT_CLASSIFIER=tests.helpers.slow:slow)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from qcat.engine import Prediction
from worker.classifier import ConstantClassifier, constant_classifier
from worker.settings import WorkerSettings

DELAY_SECONDS = 8.0


class SlowClassifier(ConstantClassifier):
    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        time.sleep(DELAY_SECONDS)
        return super().classify(texts)


def slow(settings: WorkerSettings) -> SlowClassifier:
    return SlowClassifier(constant_classifier(settings).taxonomy)
