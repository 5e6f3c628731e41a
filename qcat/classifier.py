"""The seam between the worker and whatever classifies: a small protocol, its prediction, and backends by name.

Nothing here imports torch, so the worker's light side (decoding, routing, publishing, tests of those) never does.
A backend is a function from settings to a `Classifier`; it may load an adapter (`settings.adapter`), and then hot
swap works for it. Backends are found by name: the built-in ones below, any that an installed package declares in
the `qcat.backends` entry-point group, or `module:factory` (`QCAT_CLASSIFIER`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from qcat.errors import UsageError
from qcat.routing import RoutingPolicy
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import CPU_MAX_BATCH

if TYPE_CHECKING:
    from qcat.settings import EngineSettings

DEFAULT_TAXONOMY = Path(__file__).parent / "assets" / "trec6.json"
BUILT_IN = {
    "torch": "qcat.pytorch.engine:load_engine",
    "constant": "qcat.classifier:constant_classifier",
}
"""The backends qcat ships: its engine on PyTorch, and a constant one that isolates the pipeline's own cost."""


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]
    truncated: bool
    distance: float | None = None
    """How far the question lies from the nearest label's questions (the adapter's open-set distance; None without
    one): its routing policy sends questions beyond its boundary to review."""

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda item: item[1], reverse=True)[:k]


class Classifier(Protocol):
    @property
    def taxonomy(self) -> Taxonomy: ...

    @property
    def adapter_version(self) -> str | None: ...

    @property
    def model_name(self) -> str: ...

    @property
    def routing(self) -> RoutingPolicy:
        """When answers go to review: the serving adapter's policy (its manifest's), else the default."""
        ...

    @property
    def preferred_batch(self) -> int:
        """Questions per `classify` call that use it well: the worker's micro-batch unless QCAT_MAX_BATCH is set."""
        ...

    def classify(self, texts: Sequence[str]) -> list[Prediction]: ...


Backend = Callable[["EngineSettings"], Classifier]


def backend(name: str) -> Backend:
    """The backend called `name`: built in, declared by a package (`qcat.backends` entry points) or `module:factory`."""
    declared = {point.name: point.value for point in entry_points(group="qcat.backends")}
    target = BUILT_IN.get(name) or declared.get(name) or name
    module_name, _, attribute = target.partition(":")
    try:
        factory: Backend = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        known = sorted({*BUILT_IN, *declared})
        why = f"QCAT_CLASSIFIER={name!r} is neither a backend ({', '.join(known)}) nor module:factory"
        raise UsageError(why) from error
    return factory


def load_classifier(settings: EngineSettings) -> Classifier:
    return backend(settings.classifier)(settings)


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

    @property
    def routing(self) -> RoutingPolicy:
        return RoutingPolicy()

    @property
    def preferred_batch(self) -> int:
        return CPU_MAX_BATCH

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        return [self._prediction] * len(texts)


def constant_classifier(settings: EngineSettings) -> ConstantClassifier:
    """`QCAT_CLASSIFIER=constant`: the pipeline with no model (benchmarks)."""
    return ConstantClassifier(Taxonomy.from_file(settings.taxonomy or DEFAULT_TAXONOMY))
