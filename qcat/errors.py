"""qcat's errors: one tree, so callers can catch qcat's own failures apart from bugs. The lowest layer: every qcat
package imports it, and it imports nothing of qcat's.

QcatError                      what went wrong and what to do; `exit_code` is what the CLI exits with
├── UsageError                 a setting or option value that cannot work (exit 2, as Typer's own usage errors)
├── InputError                 the user's input cannot be used (exit 4)
│   ├── DataError              labeled data: missing, empty, malformed, contradictory
│   ├── ContractError          values the wire contract refuses: a taxonomy of one label, two labels that share a
│   │                          routing topic, a label outside the taxonomy
│   ├── AdapterError           an adapter that is missing, unsafe, corrupt or made for another model
│   └── OutputExistsError      an output folder (--out, --report) that already holds something
├── UnavailableError           what the code runs against is missing or unreachable (exit 5)
│   ├── ModelLoadError         the base model
│   ├── RegistryError          the adapter registry
│   └── KafkaError             brokers, topics, the embedded broker (one mapping of a client's errors: qcat.kafka)
│       └── PublishAbortedError  a stopping worker gave up on outputs; their inputs are redelivered
├── InferenceError             a batch could not be classified (`bad_indices`: the rows at fault); exit 4, and in
│                              the worker a dead letter
└── TrainingError              training diverged on this data and recipe (non-finite logits, ...); exit 4

Exit codes of the CLI (docs/cli.md): 0 success, 1 a bug (a traceback), 2 usage, 3 the promotion gate said no,
4 input, 5 environment.
"""

from __future__ import annotations


class QcatError(Exception):
    """Root of qcat's errors: the message says what went wrong and what to do. Raised only as one of its leaves."""

    exit_code = 1


class UsageError(QcatError):
    exit_code = 2


class InputError(QcatError):
    exit_code = 4


class DataError(InputError):
    pass


class ContractError(InputError):
    """Also what a contract's constructor raises for values it refuses (a taxonomy of one label, an unknown label)."""


class AdapterError(InputError):
    pass


class OutputExistsError(InputError):
    pass


class UnavailableError(QcatError):
    exit_code = 5


class ModelLoadError(UnavailableError):
    pass


class RegistryError(UnavailableError):
    pass


class KafkaError(UnavailableError):
    pass


class PublishAbortedError(KafkaError):
    pass


class InferenceError(QcatError):
    """Carries the indices (within the classify() call) of the texts whose logits were bad."""

    exit_code = 4

    def __init__(self, message: str, bad_indices: tuple[int, ...]) -> None:
        super().__init__(message)
        self.bad_indices = bad_indices


class TrainingError(QcatError):
    exit_code = 4
