"""The adapter registry: immutable versions, a gated promotion, an atomic current pointer, rollback."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from qcat.classifier import ConstantClassifier
from qcat.errors import AdapterError, OutputExistsError, RegistryError
from qcat.gate import GateScores, paired_verdict
from qcat.manifest import MANIFEST, read_manifest
from qcat.pytorch.model import LoadedModel
from qcat.registry import Registry
from qcat.schemas.taxonomy import Taxonomy
from tests.helpers.adapters import untrained_adapter

TAXONOMY = Taxonomy.from_names(["HUM", "LOC", "NUM"])


class Loaded(ConstantClassifier):
    """What a backend returns for an adapter: a classifier that says which version it serves."""

    def __init__(self, version: str) -> None:
        super().__init__(TAXONOMY)
        self._version = version

    @property
    def adapter_version(self) -> str | None:
        return self._version


@pytest.fixture
def make(fresh_tiny: Callable[[], LoadedModel], tmp_path: Path) -> Callable[..., Path]:
    """Saves a real (untrained) LoRA adapter with the given version, accuracy and eval set."""

    def build(version: str, accuracy: float, eval_fingerprint: str | None = "eval-A") -> Path:
        metrics = {"accuracy": accuracy}
        directory = tmp_path / "built" / version
        return untrained_adapter(
            fresh_tiny(), TAXONOMY, version, directory, metrics=metrics, eval_fingerprint=eval_fingerprint
        )

    return build


def test_gate_accepts_better_refuses_worse_and_rolls_back(make: Callable[..., Path], tmp_path: Path) -> None:
    """A better candidate is promoted, a worse one refused (unless forced), and rollback restores the previous."""
    registry = Registry(tmp_path / "registry")
    for version, accuracy in (("v1", 0.80), ("v2", 0.90), ("v3", 0.85)):
        registry.add(make(version, accuracy))
    assert [m.version for m in registry.manifests()] == ["v1", "v2", "v3"]
    assert registry.promote("v1").promoted
    assert registry.promote("v2").promoted
    refused = registry.promote("v3")
    assert not refused.promoted
    assert "worse" in refused.reason
    assert registry.current() == "v2"
    assert registry.promote("v3", force=True).promoted
    assert registry.rollback().version == "v2"
    assert registry.current() == "v2"
    assert registry.current_path() == tmp_path / "registry" / "versions" / "v2"
    assert registry.rollback().version == "v1", "a second rollback goes further back, not forward to v3"


def test_within_tolerance_is_accepted_and_other_eval_sets_are_refused(
    make: Callable[..., Path], tmp_path: Path
) -> None:
    """A candidate within the tolerance passes; one measured on another eval set is not comparable."""
    registry = Registry(tmp_path / "registry")
    registry.add(make("v1", 0.900))
    registry.add(make("v2", 0.897))
    registry.add(make("v3", 0.99, eval_fingerprint="eval-B"))
    registry.promote("v1")
    assert registry.promote("v2").promoted
    refused = registry.promote("v3")
    assert not refused.promoted
    assert "score both on one gate set" in refused.reason


def test_the_paired_gate_promotes_through_noise_and_refuses_a_clear_loss(
    make: Callable[..., Path], tmp_path: Path
) -> None:
    """On one gate set, row by row: a candidate a few flips worse (noise) is promoted, one clearly worse is refused
    with both accuracies and the flips each way; the answers are kept per version and gate set."""
    registry = Registry(tmp_path / "registry")
    for version in ("v1", "v2", "v3"):
        registry.add(make(version, 0.9, eval_fingerprint=f"own-{version}"))  # each its own held-out split
    registry.promote("v1")
    current = GateScores("v1", "gate-1", (True,) * 180 + (False,) * 20)
    noisy = GateScores("v2", "gate-1", (True,) * 177 + (False,) * 23)
    worse = GateScores("v3", "gate-1", (True,) * 150 + (False,) * 50)
    for scores in (current, noisy, worse):
        registry.record_gate(scores)
    assert registry.gate_scores("v2", "gate-1") == noisy
    promoted = registry.promote("v2", verdict=paired_verdict(noisy, current, tolerance=0.005))
    assert promoted.promoted, promoted.reason
    refused = registry.promote("v3", verdict=paired_verdict(worse, noisy, tolerance=0.005))
    assert not refused.promoted
    assert "0.7500 against 0.8850" in refused.reason
    assert registry.promote("v3", verdict=paired_verdict(worse, current, tolerance=0.005)).reason.startswith("the")


def test_staging_left_by_a_dead_writer_is_cleaned_and_a_full_disk_is_one_error(
    make: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hidden staging older than ten minutes goes at the next write, a fresh one (a writer at work) stays; a write
    that fails (ENOSPC) is a RegistryError and leaves no staging behind."""
    root = tmp_path / "registry"
    registry = Registry(root)
    registry.add(make("v1", 0.9))
    stale, fresh = root / "versions" / f".v9.{'a' * 32}", root / f".current.json.{'b' * 32}"
    stale.mkdir()
    fresh.write_text("{}")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    registry.add(make("v2", 0.9))
    assert not stale.exists()
    assert fresh.exists()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry.fs, "pipe_file", full)
    with pytest.raises(RegistryError, match="No space left"):
        registry.promote("v1", force=True)
    assert registry.current() is None
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".current")) == [fresh.name]


def test_versions_are_immutable_and_unknown_ones_named(make: Callable[..., Path], tmp_path: Path) -> None:
    """Registering a version twice is refused; asking for an unknown one lists the known ones."""
    registry = Registry(tmp_path / "registry")
    adapter = make("v1", 0.5)
    registry.add(adapter)
    with pytest.raises(OutputExistsError, match="immutable"):
        registry.add(adapter)
    with pytest.raises(RegistryError, match=r"known: \['v1'\]"):
        registry.show("v9")
    with pytest.raises(RegistryError, match="nothing to roll back"):
        registry.rollback()


def test_registry_at_a_url_downloads_versions_into_a_local_cache(make: Callable[..., Path], tmp_path: Path) -> None:
    """The same gate and pointer through fsspec at a non-local URL (fsspec's in-memory store); adapters are served
    from a local cached copy, so the engine never reads a store directly."""
    url = f"memory://qcat-test-{tmp_path.name}"
    registry = Registry(url, cache=tmp_path / "cache")
    assert not registry.local
    v1 = make("v1", 0.90)
    registry.add(v1)
    registry.add(make("v2", 0.80))
    assert [m.version for m in registry.manifests()] == ["v1", "v2"]
    assert registry.current() is None
    assert registry.promote("v1").promoted
    assert not registry.promote("v2").promoted, "the gate holds at a URL too"
    reopened = Registry(url, cache=tmp_path / "cache")
    assert reopened.current() == "v1"
    local = reopened.current_path()
    assert local is not None
    assert local.is_relative_to(tmp_path / "cache")
    assert read_manifest(local).version == "v1"
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in v1.iterdir())
    assert registry.promote("v2", force=True).promoted
    assert registry.rollback().version == "v1"
    with pytest.raises(RegistryError, match=r"known: \['v1', 'v2'\]"):
        registry.path("v9")


def test_registry_url_without_its_filesystem_package_says_so(tmp_path: Path) -> None:
    """A URL whose fsspec filesystem is not installed fails with a RegistryError naming the registry."""
    with pytest.raises(RegistryError, match="cannot open the registry"):
        Registry("nosuchstore://bucket/qcat")


def test_a_worker_resolves_an_announced_version_from_a_bucket(
    make: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An announcement resolves through the worker's registry URL to a local cached copy, loaded off the event loop;
    a version the registry lacks is refused without a load, and a failed load leaves serving as it was."""
    import asyncio
    import threading

    from qcat.classifier import ConstantClassifier
    from qcat.schemas.events import AdapterAnnouncement
    from qcat.worker.hot_swap import AdapterWatcher, Serving
    from qcat.worker.metrics import WorkerMetrics
    from qcat.worker.settings import WorkerSettings

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    url = f"memory://qcat-watch-{tmp_path.name}"
    Registry(url).add(make("v1", 0.9))
    Registry(url).add(make("v2", 0.9))
    Registry(url).promote("v1")
    loads: list[tuple[Path, str]] = []
    resolving_threads: list[str] = []
    resolve = Registry.path

    def spied_path(registry: Registry, version: str) -> Path:
        resolving_threads.append(threading.current_thread().name)
        return resolve(registry, version)

    monkeypatch.setattr(Registry, "path", spied_path)

    def load(path: Path) -> ConstantClassifier:
        loads.append((path, threading.current_thread().name))
        if not (path / "qcat-manifest.json").is_file():
            raise FileNotFoundError(path)
        return Loaded(read_manifest(path).version)

    serving = Serving(ConstantClassifier(TAXONOMY))
    watcher = AdapterWatcher(WorkerSettings(registry=url), "t.adapters", serving, WorkerMetrics(), load)
    before = serving.classifier
    missing = AdapterAnnouncement(action="promote", version="v9", path=str(tmp_path / "nowhere"))
    asyncio.run(watcher.handle(missing.model_dump_json().encode()))
    assert loads == [], "an unknown version is refused before anything loads"
    assert serving.classifier is before
    failing = AdapterWatcher(WorkerSettings(registry=url), "t.adapters", serving, WorkerMetrics(), load)
    monkeypatch.setattr(Registry, "current", lambda registry: "v2")
    broken = AdapterAnnouncement(action="promote", version="v2", path="/not/used")
    monkeypatch.setattr(Registry, "path", lambda registry, version: tmp_path / "nowhere")
    asyncio.run(failing.handle(broken.model_dump_json().encode()))
    assert loads[-1][0] == tmp_path / "nowhere"
    assert serving.classifier is before, "a failed load keeps the current classifier"
    monkeypatch.setattr(Registry, "path", spied_path)
    monkeypatch.setattr(Registry, "current", lambda registry: "v1")
    announced = AdapterAnnouncement(action="promote", version="v1", path="/not/used")
    asyncio.run(watcher.handle(announced.model_dump_json().encode()))
    path, thread = loads[-1]
    assert path.is_relative_to(tmp_path / "xdg" / "qcat" / "registry")
    assert read_manifest(path).version == "v1"
    assert thread.startswith("qcat-adapter-loader")
    assert resolving_threads, "resolved through the registry"
    assert all(name.startswith("qcat-adapter-loader") for name in resolving_threads), "a download never blocks the loop"
    assert serving.classifier is not before


def test_versions_are_names_and_never_lead_out_of_the_registry(make: Callable[..., Path], tmp_path: Path) -> None:
    """A version with a path in it, a version folder that is a symbolic link, and one holding a link are refused;
    so is a manifest whose version is not a name."""
    registry = Registry(tmp_path / "registry")
    registry.add(make("v1", 0.9))
    outside = tmp_path / "outside"
    shutil.copytree(registry.path("v1"), outside / "evil")
    for version in ("../../outside/evil", "/etc", "..", "v1/../v1", ""):
        with pytest.raises(RegistryError, match="not a version name"):
            registry.path(version)
    (Path(registry.versions) / "linked").symlink_to(outside / "evil")
    with pytest.raises(RegistryError, match="symbolic link"):
        registry.path("linked")
    shutil.copytree(registry.path("v1"), Path(registry.versions) / "holds-link")
    weights = Path(registry.versions) / "holds-link" / "adapter_model.safetensors"
    weights.unlink()
    weights.symlink_to(outside / "evil" / "adapter_model.safetensors")
    with pytest.raises(RegistryError, match="symbolic links"):
        registry.path("holds-link")
    manifest = json.loads((outside / "evil" / MANIFEST).read_text()) | {"version": "../evil"}
    (outside / "evil" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(AdapterError, match="version"):
        registry.add(outside / "evil")


@pytest.mark.parametrize(
    ("settings", "version", "loaded"),
    [
        ({}, "v1", "v1"),  # the registry's current version
        ({}, "v2", None),  # registered, not promoted
        ({"serve_adapters": "registered"}, "v2", "v2"),
        ({}, "evil", None),  # unknown to the registry, with a path outside it
        ({"announced_paths": True}, "evil", "outside"),
        ({"registry": None}, "v1", None),  # no registry at all
    ],
)
def test_announced_versions_load_only_as_the_serving_policy_allows(
    make: Callable[..., Path], tmp_path: Path, settings: dict[str, object], version: str, loaded: str | None
) -> None:
    """By default a worker serves only the registry's current version; `serve_adapters=registered` widens that to any
    registered version, and only `announced_paths` lets an announced path outside the registry load."""
    import asyncio

    from qcat.classifier import ConstantClassifier
    from qcat.schemas.events import AdapterAnnouncement
    from qcat.worker.hot_swap import AdapterWatcher, Serving
    from qcat.worker.metrics import WorkerMetrics
    from qcat.worker.settings import WorkerSettings

    registry = Registry(tmp_path / "registry")
    registry.add(make("v1", 0.9))
    registry.add(make("v2", 0.9))
    registry.promote("v1")
    outside = shutil.copytree(registry.path("v2"), tmp_path / "outside")
    (outside / MANIFEST).write_text(json.dumps(json.loads((outside / MANIFEST).read_text()) | {"version": "evil"}))
    loads: list[Path] = []

    def load(path: Path) -> ConstantClassifier:
        loads.append(path)
        return Loaded(read_manifest(path).version)

    metrics = WorkerMetrics()
    options = {"registry": str(registry.root)} | settings
    watcher = AdapterWatcher(
        WorkerSettings(**options), "t.adapters", Serving(ConstantClassifier(TAXONOMY)), metrics, load
    )
    announcement = AdapterAnnouncement(action="promote", version=version, path=str(outside))
    asyncio.run(watcher.handle(announcement.model_dump_json().encode()))
    expected = {None: [], "outside": [outside]}.get(loaded, [Path(registry.versions) / str(loaded)])
    assert loads == expected
    refused = metrics.registry.get_sample_value("qcat_adapter_swaps_total", {"result": "refused"})
    assert (refused or 0) == (0 if loaded else 1)


def _promote_at_the_barrier(root: str, version: str, barrier: Any) -> bool:
    barrier.wait()
    return Registry(root).promote(version, force=True).promoted


def test_concurrent_promotions_keep_history_and_pointer_consistent(make: Callable[..., Path], tmp_path: Path) -> None:
    """Two processes promoting at the same instant, ten times over: every promotion is in the history, current.json
    names the last one, and each rollback finds what was current before."""
    registry = Registry(tmp_path / "registry")
    names = [f"v{i}" for i in range(20)]
    for name in names:
        registry.add(make(name, 0.9))
    context = multiprocessing.get_context("fork")
    with context.Manager() as manager, ProcessPoolExecutor(2, mp_context=context) as pool:
        for pair in range(10):
            barrier = manager.Barrier(2)
            futures = [
                pool.submit(_promote_at_the_barrier, registry.url, name, barrier) for name in names[2 * pair :][:2]
            ]
            assert all(future.result(timeout=60) for future in futures)
    history = registry._history()
    assert len(history) == 20
    assert registry.current() == history[-1]["version"]
    assert [entry["previous"] for entry in history[1:]] == [entry["version"] for entry in history[:-1]]
    assert registry.rollback().version == history[-2]["version"]


def test_a_crash_between_history_and_pointer_leaves_the_registry_usable(
    make: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A promotion that dies after writing its history entry but before moving current.json changes nothing that
    serves: the old version stays current, and rollback and later promotions work."""
    registry = Registry(tmp_path / "registry")
    for name in ("v1", "v2", "v3"):
        registry.add(make(name, 0.9))
    registry.promote("v1")
    registry.promote("v2")
    replace = Registry.replace_file

    def dies_at_the_pointer(self: Registry, name: str, content: bytes) -> None:
        if name == "current.json":
            raise OSError("killed")
        replace(self, name, content)

    monkeypatch.setattr(Registry, "replace_file", dies_at_the_pointer)
    with pytest.raises(OSError, match="killed"):
        registry.promote("v3")
    monkeypatch.setattr(Registry, "replace_file", replace)
    assert registry.current() == "v2"
    assert registry.rollback().version == "v1"
    assert registry.promote("v3", force=True).promoted


def test_damaged_registry_files_give_one_error_with_the_repair(make: Callable[..., Path], tmp_path: Path) -> None:
    """A torn history line stops promote before anything changes; a truncated current.json is reported with how to
    repair it; an invalid manifest hides neither the other versions nor the right error for an unknown one."""
    root = tmp_path / "registry"
    registry = Registry(root)
    for name in ("v1", "v2"):
        registry.add(make(name, 0.9))
    registry.promote("v1")
    history = (root / "history.jsonl").read_text()
    (root / "history.jsonl").write_text(history + '{"at": "2026-')
    with pytest.raises(RegistryError, match=r"history.jsonl line 2 is damaged.*delete that line"):
        registry.promote("v2", force=True)
    assert registry.current() == "v1"
    (root / "history.jsonl").write_text(history)
    (root / "current.json").write_text('{"vers')
    with pytest.raises(RegistryError, match=r"current.json is damaged.*delete it"):
        registry.current()
    (root / "current.json").unlink()
    assert registry.promote("v1", force=True).promoted
    (root / "versions" / "v2" / MANIFEST).write_text("{")
    manifests, broken = registry.scan()
    assert [m.version for m in manifests] == ["v1"]
    assert list(broken) == ["v2"]
    with pytest.raises(RegistryError, match=r"no adapter version 'no-such'"):
        registry.promote("no-such")
