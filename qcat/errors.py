"""qcat's errors, all under one root so callers can catch qcat's own failures apart from bugs.

QcatError
├── ModelLoadError        the base model could not be loaded (says where to get it)
├── AdapterError          an adapter is missing, unsafe, corrupt or made for another model/taxonomy
└── InferenceError        a batch could not be classified (non-finite logits, ...); the worker dead-letters it
"""

from __future__ import annotations


class QcatError(Exception):
    """Root of qcat's errors: the message says what went wrong and what to do."""


class ModelLoadError(QcatError):
    pass


class AdapterError(QcatError):
    pass


class InferenceError(QcatError):
    """Carries the indices (within the classify() call) of the texts whose logits were bad."""

    def __init__(self, message: str, bad_indices: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.bad_indices = bad_indices
