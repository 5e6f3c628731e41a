"""Slow classifiers: slower per batch than the consumer session timeout (QCAT_CLASSIFIER=tests.helpers.slow:slow),
and one as slow as a CPU model (`model_paced`: a second a batch, longer than the fetch loop's wait for buffer room)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from qcat.classifier import ConstantClassifier, Prediction, constant_classifier
from qcat.worker.settings import WorkerSettings

DELAY_SECONDS = 8.0
MODEL_PACED_SECONDS = 1.0


class SlowClassifier(ConstantClassifier):
    delay = DELAY_SECONDS

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        time.sleep(self.delay)
        return super().classify(texts)


class ModelPacedClassifier(SlowClassifier):
    delay = MODEL_PACED_SECONDS


def slow(settings: WorkerSettings) -> SlowClassifier:
    return SlowClassifier(constant_classifier(settings).taxonomy)


def model_paced(settings: WorkerSettings) -> ModelPacedClassifier:
    return ModelPacedClassifier(constant_classifier(settings).taxonomy)
