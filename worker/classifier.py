"""What the worker needs from a model: the engine satisfies it; tests and benchmarks pass lighter ones."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from qcat.engine import DEFAULT_TAXONOMY, Prediction
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings


class Classifier(Protocol):
    @property
    def taxonomy(self) -> Taxonomy: ...

    @property
    def adapter_version(self) -> str | None: ...

    @property
    def model_name(self) -> str: ...

    def classify(self, texts: Sequence[str]) -> list[Prediction]: ...


class ConstantClassifier:
    """Labels everything with the first label at full confidence: isolates the pipeline's own cost (benchmarks)."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        self._taxonomy = taxonomy
        first = taxonomy.names[0]
        self._prediction = Prediction(first, 1.0, {name: float(name == first) for name in taxonomy.names}, False)

    @property
    def taxonomy(self) -> Taxonomy:
        return self._taxonomy

    @property
    def adapter_version(self) -> str | None:
        return None

    @property
    def model_name(self) -> str:
        return "constant"

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        return [self._prediction] * len(texts)


def constant_classifier(settings: EngineSettings) -> ConstantClassifier:
    """`QCAT_CLASSIFIER=qcat.worker.classifier:constant_classifier`: the pipeline with no model (benchmarks)."""
    return ConstantClassifier(Taxonomy.from_file(settings.taxonomy or DEFAULT_TAXONOMY))
