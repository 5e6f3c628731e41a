"""`qcat demo`, the README's main job, end to end: its own embedded broker, a worker process, sample questions."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from qcat.pytorch.model import LoadedModel
from qcat.registry import Registry
from qcat.schemas.taxonomy import Taxonomy
from tests.helpers.adapters import untrained_adapter
from tests.integration.kafka import run_qcat

TREC6 = Taxonomy.from_names(["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"])


def offline_env(tmp_path: Path) -> dict[str, str]:
    """No cached hub model, whatever this machine holds: the demo must fall back on its own."""
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("QCAT_REGISTRY", None)
    env.pop("QCAT_ADAPTER", None)
    return env


def test_demo_runs_offline_on_the_built_in_model_and_routes_every_question(tmp_path: Path) -> None:
    """With no adapter and no cached hub model, the demo says it falls back to the built-in model, fits a small
    adapter on TREC's training questions so the labels mean something (its accuracy shown), and routes all."""
    done = run_qcat(offline_env(tmp_path), "demo", "--count", 12, "--rate", 30)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "built-in random-weight model" in done.stdout
    assert "fitted:" in done.stdout
    assert "demo-adapter" in done.stdout
    assert "sent 12, routed 12" in done.stdout


def test_demo_serves_the_registry_s_promoted_adapter(fresh_tiny: Callable[[], LoadedModel], tmp_path: Path) -> None:
    """With QCAT_REGISTRY set, the demo serves the promoted version, names it and routes every question."""
    adapter = untrained_adapter(fresh_tiny(), TREC6, "v-demo", tmp_path / "built")
    registry = Registry(tmp_path / "registry")
    registry.add(adapter)
    assert registry.promote("v-demo").promoted

    env = offline_env(tmp_path) | {"QCAT_REGISTRY": str(tmp_path / "registry")}
    done = run_qcat(env, "demo", "--count", 8, "--rate", 30)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "v-demo is the promoted adapter in the registry" in done.stdout
    assert "sent 8, routed 8" in done.stdout
