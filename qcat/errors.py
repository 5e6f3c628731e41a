"""qcat's errors: one tree, so callers can catch qcat's own failures apart from bugs. The lowest layer: every qcat
package imports it, and it imports nothing of qcat's.

QcatError                      what went wrong and what to do; `exit_code` is what the CLI exits with
├── UsageError                 a setting or option value that cannot work (exit 2, as Typer's own usage errors)
├── InputError                 the user's input cannot be used (exit 4)
│   ├── DataError              labeled data: missing, empty, malformed, contradictory (`path`)
│   ├── ContractError          labels that break the wire contract, e.g. two that share a routing topic (`labels`)
│   ├── AdapterError           an adapter that is missing, unsafe, corrupt or made for another model (`path`)
│   └── OutputExistsError      an output folder (--out, --report) that already holds something (`path`)
├── UnavailableError           what the code runs against is missing or unreachable (exit 5)
│   ├── ModelLoadError         the base model (`model`)
│   ├── RegistryError          the adapter registry (`registry`)
│   └── KafkaError             brokers, topics, the embedded broker (`brokers`)
│       └── PublishAbortedError  a stopping worker gave up on outputs (`outputs`); their inputs are redelivered
├── InferenceError             a batch could not be classified (`bad_indices`: the rows at fault); exit 4, and in
│                              the worker a dead letter
└── TrainingError              training diverged on this data and recipe (non-finite logits, ...); exit 4

Exit codes of the CLI (docs/cli.md): 0 success, 1 a bug (a traceback), 2 usage, 3 the promotion gate said no,
4 input, 5 environment.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class QcatError(Exception):
    """Root of qcat's errors: the message says what went wrong and what to do. Raised only as one of its leaves."""

    exit_code = 1


class UsageError(QcatError):
    exit_code = 2


class InputError(QcatError):
    exit_code = 4


class DataError(InputError):
    def __init__(self, message: str, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ContractError(InputError):
    def __init__(self, message: str, labels: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.labels = tuple(labels)


class AdapterError(InputError):
    def __init__(self, message: str, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = path


class OutputExistsError(InputError):
    def __init__(self, message: str, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = path


class UnavailableError(QcatError):
    exit_code = 5


class ModelLoadError(UnavailableError):
    def __init__(self, message: str, model: str | None = None) -> None:
        super().__init__(message)
        self.model = model


class RegistryError(UnavailableError):
    def __init__(self, message: str, registry: str | None = None) -> None:
        super().__init__(message)
        self.registry = registry


class KafkaError(UnavailableError):
    def __init__(self, message: str, brokers: str | None = None) -> None:
        super().__init__(message)
        self.brokers = brokers


class PublishAbortedError(KafkaError):
    def __init__(self, message: str, outputs: int = 0) -> None:
        super().__init__(message)
        self.outputs = outputs


class InferenceError(QcatError):
    """Carries the indices (within the classify() call) of the texts whose logits were bad."""

    exit_code = 4

    def __init__(self, message: str, bad_indices: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.bad_indices = bad_indices


class TrainingError(QcatError):
    exit_code = 4
