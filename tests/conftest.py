"""Shared fixtures: the built-in tiny model, built once per session (seconds), in float32 for exact comparisons."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch

from qcat.pytorch.model import LoadedModel, load_base_model, private_copy
from qcat.settings import TINY_NAME


@pytest.fixture(scope="session")
def _tiny_pristine() -> LoadedModel:
    return load_base_model(TINY_NAME, device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture
def fresh_tiny(_tiny_pristine: LoadedModel) -> Callable[[], LoadedModel]:
    """Makes copies of tiny-qwen3 that a test may modify (attach heads, adapters) without affecting others."""

    return functools.partial(private_copy, _tiny_pristine)


@pytest.fixture
def tiny(fresh_tiny: Callable[[], LoadedModel]) -> LoadedModel:
    """A private copy of tiny-qwen3."""
    return fresh_tiny()
