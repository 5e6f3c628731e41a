"""Reliability scenarios on the control topic: announcements of adapters that must not be served, to a running
worker. Part of `python bench/reliability.py`; CI runs them through tests/integration/test_reliability.py.

- broken adapters (corrupt weights, another base model, other labels, a pickle, half written): refused when loaded;
- adapters from outside the registry (a path in the version, an unknown version with a path, a version folder that
  links outside, a registered version that was never promoted): refused before anything loads.
In every case the worker keeps serving v1.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qcat.control import announce
from qcat.kafka import KafkaSettings
from qcat.manifest import MANIFEST
from qcat.registry import Registry
from qcat.schemas.events import AdapterAnnouncement
from qcat.worker.broker import EmbeddedBroker
from tests.integration.kafka import ROOT, WorkerProcess, consume, produce, question, unique


def registry_serving_v1(tmp: Path) -> tuple[Registry, str]:
    """A registry whose current version, v1, was trained on the built-in model through the CLI."""
    data = tmp / "learn.jsonl"
    rows = [{"text": f"Who made thing {i}?", "label": "HUM"} for i in range(30)]
    rows += [{"text": f"Where is place {i}?", "label": "LOC"} for i in range(30)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    registry = Registry(tmp / "registry")
    subprocess.run(
        [sys.executable, "-m", "qcat", "train", str(data), "--out", str(tmp / "v1"), "--base-model", "tiny-qwen3",
         "--epochs", "2", "--dtype", "float32", "--batch-size", "16"],
        check=True, cwd=ROOT, capture_output=True,
    )  # fmt: skip
    v1 = registry.add(tmp / "v1").version
    registry.promote(v1)
    return registry, v1


def copy_as(source: Path, target: Path, version: str) -> Path:
    """A copy of a working adapter under another version name: it would load, if a worker let it."""
    shutil.copytree(source, target)
    manifest = json.loads((target / MANIFEST).read_text()) | {"version": version}
    (target / MANIFEST).write_text(json.dumps(manifest))
    return target


def refusals(process: WorkerProcess) -> float:
    """Adapter announcements the worker did not serve (invalid, refused, or failed to load)."""
    return sum(
        float(line.split()[-1])
        for line in process.get("/metrics").splitlines()
        if line.startswith("qcat_adapter_swaps_total{") and 'result="swapped"' not in line
    )


def served_versions(address: str, prefix: str, event_id: str) -> list[str | None]:
    topic = f"{prefix}.categorized"
    got = consume(address, [topic], lambda c: any(r.key == event_id.encode() for r in c.by_topic.get(topic, [])), 60)
    return [json.loads(r.value)["adapter_version"] for r in got.by_topic.get(topic, []) if r.key == event_id.encode()]


def announce_each(
    registry: Registry, v1: str, cases: dict[str, Callable[[], bytes]], tmp: Path, **settings: object
) -> dict[str, Any]:
    """Start a worker serving v1, send each case's announcement, and check that it is refused and v1 still serves."""
    prefix = unique("r-adapters")
    results: dict[str, Any] = {}
    with EmbeddedBroker() as broker:
        process = WorkerProcess(
            broker.address, prefix, tmp, registry=registry.root, confidence_threshold=0, **settings
        ).start()
        try:
            for index, (case, announcement) in enumerate(cases.items(), start=1):
                produce(broker.address, f"{prefix}.adapters", [(None, announcement(), [])])
                deadline = time.monotonic() + 60
                while refusals(process) < index and time.monotonic() < deadline:
                    time.sleep(0.2)
                produce(broker.address, f"{prefix}.incoming", [(case.encode(), question(case, "Where is x?"), [])])
                served = served_versions(broker.address, prefix, case)
                results[case] = {"refused": refusals(process) >= index, "still_serving": served == [v1]}
        finally:
            process.stop()
    return results


def bad_adapters(tmp: Path, served: tuple[Registry, str] | None = None) -> dict[str, Any]:
    """Five broken versions, registered and announced to a worker that serves any registered version (so each one
    gets as far as loading): each is refused, the worker keeps serving v1."""
    registry, v1 = served or registry_serving_v1(tmp)

    def broken(name: str, damage: Callable[[Path], None]) -> Callable[[], bytes]:
        def announcement() -> bytes:
            target = copy_as(registry.path(v1), Path(registry.versions) / name, name)
            damage(target)
            return AdapterAnnouncement(action="promote", version=name, path=str(target)).model_dump_json().encode()

        return announcement

    def edit_manifest(**changes: Any) -> Callable[[Path], None]:
        def apply(target: Path) -> None:
            manifest = json.loads((target / MANIFEST).read_text())
            (target / MANIFEST).write_text(json.dumps(manifest | changes))

        return apply

    def pickled(target: Path) -> None:
        (target / "adapter_model.safetensors").unlink()
        (target / "adapter_model.bin").write_bytes(b"\x80\x04\x95 pickle")

    cases = {
        "corrupt_weights": broken("corrupt_weights", lambda t: (t / "adapter_model.safetensors").write_bytes(b"junk")),
        "wrong_base_model": broken("wrong_base_model", edit_manifest(base_fingerprint="0000000000000000")),
        "label_mismatch": broken("label_mismatch", edit_manifest(taxonomy={"labels": [{"name": "X"}, {"name": "Y"}]})),
        "pickle_instead_of_safetensors": broken("pickle_instead_of_safetensors", pickled),
        "half_written": broken("half_written", lambda t: (t / MANIFEST).unlink()),
    }
    return announce_each(registry, v1, cases, tmp, serve_adapters="registered")


def outside_registry(tmp: Path, served: tuple[Registry, str] | None = None) -> dict[str, Any]:
    """Working adapters a worker must not serve by default: each would load and label, were it not refused."""
    tmp.mkdir(parents=True, exist_ok=True)
    registry, v1 = served or registry_serving_v1(tmp)
    outside = tmp / "outside"

    def raw(version: str, path: Path) -> bytes:
        return json.dumps({"schema_version": 1, "action": "promote", "version": version, "path": str(path)}).encode()

    def traversal() -> bytes:
        copy_as(registry.path(v1), outside / "evil", "evil")
        return raw("../../outside/evil", outside / "evil")

    def unregistered() -> bytes:
        copy_as(registry.path(v1), outside / "elsewhere", "elsewhere")
        return raw("elsewhere", outside / "elsewhere")

    def unpromoted() -> bytes:
        registry.add(copy_as(registry.path(v1), tmp / "unpromoted", "unpromoted"))
        return raw("unpromoted", Path(registry.versions) / "unpromoted")

    def linked() -> bytes:
        (Path(registry.versions) / "linked").symlink_to(copy_as(registry.path(v1), outside / "linked", "linked"))
        registry.promote("linked", force=True)  # even the current version is refused when it leads elsewhere
        return raw("linked", Path(registry.versions) / "linked")

    cases = {
        "path_in_version": traversal,
        "unregistered_version_with_a_path": unregistered,
        "registered_not_promoted": unpromoted,
        "version_folder_links_outside": linked,
    }
    try:
        return announce_each(registry, v1, cases, tmp)
    finally:
        registry.promote(v1, force=True)


def control_topic_recreated(tmp: Path, served: tuple[Registry, str] | None = None) -> dict[str, Any]:
    """The broker restarts empty (memory storage) after the worker has read an announcement: the recreated control
    topic starts again at offset 0, behind the worker's position. The next promotion must still reach the worker,
    through the announcement itself: the worker's registry poll is off here (an hour), and the watcher must notice
    that its position is past the topic's end and read the topic again."""
    tmp.mkdir(parents=True, exist_ok=True)
    registry, v1 = served or registry_serving_v1(tmp)
    for version in ("v2", "v3"):
        registry.add(copy_as(registry.path(v1), tmp / version, version))
    prefix = unique("r-control")
    broker = EmbeddedBroker()
    broker.start()
    process = WorkerProcess(
        broker.address, prefix, tmp, registry=registry.root, confidence_threshold=0, registry_poll_interval=3600
    ).start()
    try:
        registry.promote("v2", force=True)
        settings = KafkaSettings(brokers=broker.address, topic_prefix=prefix)
        announce("promote", "v2", registry.path("v2"), settings)  # as `adapters promote --announce` does
        process.wait_for_metric('qcat_adapter_swaps_total{result="swapped"}', 1)
        broker.stop()
        broker.start()
        registry.promote("v3", force=True)
        # announced as qcat announces: the control topic is created with its one partition if missing (a raw producer's
        # auto-created topic may have several, and the announcement land where no worker reads)
        announce("promote", "v3", registry.path("v3"), settings)
        deadline, versions = time.monotonic() + 120, []
        while time.monotonic() < deadline and versions[-1:] != ["v3"]:
            produce(broker.address, f"{prefix}.incoming", [(b"probe", question("probe", "Where is x?"), [])])
            versions = served_versions(broker.address, prefix, "probe")
        return {"served_after_restart": versions[-1:] == ["v3"], "versions_seen": sorted(set(map(str, versions)))}
    finally:
        process.stop()
        broker.stop()
        registry.promote(v1, force=True)


def promotion(version: str) -> bytes:
    return AdapterAnnouncement(action="promote", version=version, path="unused").model_dump_json().encode()
