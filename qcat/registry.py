"""The adapter registry: a directory of immutable adapter versions and an atomically switched "current" pointer.

    <root>/versions/<version>/   adapter weights (safetensors), qcat-manifest.json, report/
    <root>/current.json          {"version": ...}, replaced atomically (write a temp file, then os.replace)
    <root>/history.jsonl         every promotion and rollback, so a rollback knows what came before

`promote` refuses a candidate that scores worse than the current adapter on the same eval set (beyond a tolerance),
or that was evaluated on a different eval set, unless forced.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from qcat.adapter import AdapterManifest, read_manifest
from qcat.errors import QcatError

DEFAULT_METRIC = "accuracy"
DEFAULT_TOLERANCE = 0.005


class RegistryError(QcatError):
    pass


@dataclass(frozen=True)
class Decision:
    promoted: bool
    version: str
    previous: str | None
    reason: str


class Registry:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.versions = root / "versions"

    def add(self, adapter: Path) -> AdapterManifest:
        """Copy a trained adapter directory into the registry under its manifest's version."""
        manifest = read_manifest(adapter)
        target = self.versions / manifest.version
        if target.exists():
            raise RegistryError(f"version {manifest.version} is already registered; versions are immutable")
        self.versions.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.versions, prefix=f".{manifest.version}."))
        shutil.copytree(adapter, staging / "adapter")
        (staging / "adapter").rename(target)
        staging.rmdir()
        return manifest

    def manifests(self) -> list[AdapterManifest]:
        if not self.versions.is_dir():
            return []
        manifests = [read_manifest(path) for path in self.versions.iterdir() if not path.name.startswith(".")]
        return sorted(manifests, key=lambda m: m.created_at)

    def path(self, version: str) -> Path:
        path = self.versions / version
        if not path.is_dir():
            known = [m.version for m in self.manifests()]
            raise RegistryError(f"no adapter version {version!r} in {self.root}; known: {known}")
        return path

    def show(self, version: str) -> AdapterManifest:
        return read_manifest(self.path(version))

    def current(self) -> str | None:
        pointer = self.root / "current.json"
        if not pointer.is_file():
            return None
        version: str = json.loads(pointer.read_text(encoding="utf-8"))["version"]
        return version

    def current_path(self) -> Path | None:
        version = self.current()
        return self.path(version) if version else None

    def promote(
        self, version: str, *, metric: str = DEFAULT_METRIC, tolerance: float = DEFAULT_TOLERANCE, force: bool = False
    ) -> Decision:
        candidate = self.show(version)
        previous = self.current()
        if previous == version:
            return Decision(False, version, previous, f"{version} is already current")
        if previous is not None and not force:
            refusal = _refusal(candidate, self.show(previous), metric, tolerance)
            if refusal:
                return Decision(False, version, previous, refusal)
        self._point_to(version, action="promote", previous=previous, forced=force)
        score = candidate.metrics.get(metric)
        return Decision(True, version, previous, f"promoted ({metric} {score})" + (" by force" if force else ""))

    def rollback(self) -> Decision:
        """Point back to the version that was current before the current one."""
        current = self.current()
        history = self._history()
        earlier = [
            str(entry["previous"])
            for entry in history
            if entry["action"] == "promote" and entry["version"] == current and entry["previous"]
        ]
        if current is None or not earlier:
            raise RegistryError("nothing to roll back to: no earlier promotion recorded")
        target = earlier[-1]
        self.path(target)
        self._point_to(target, action="rollback", previous=current, forced=True)
        return Decision(True, target, current, f"rolled back from {current}")

    def _point_to(self, version: str, *, action: str, previous: str | None, forced: bool) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.root, prefix=".current.")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump({"version": version}, out)
        os.replace(temporary, self.root / "current.json")
        entry = {
            "at": datetime.now(UTC).isoformat(),
            "action": action,
            "version": version,
            "previous": previous,
            "forced": forced,
        }
        with (self.root / "history.jsonl").open("a", encoding="utf-8") as log:
            log.write(json.dumps(entry) + "\n")

    def _history(self) -> list[dict[str, object]]:
        path = self.root / "history.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _refusal(candidate: AdapterManifest, current: AdapterManifest, metric: str, tolerance: float) -> str | None:
    """Why the candidate may not replace the current adapter, or None if it may."""
    if candidate.eval_fingerprint is None or candidate.eval_fingerprint != current.eval_fingerprint:
        return (
            f"not comparable: {candidate.version} was evaluated on eval set {candidate.eval_fingerprint}, the current "
            f"{current.version} on {current.eval_fingerprint}; evaluate both on the same set or use --force"
        )
    if metric not in candidate.metrics or metric not in current.metrics:
        return f"{metric} is missing from the metrics of {candidate.version} or {current.version}"
    ours, theirs = candidate.metrics[metric], current.metrics[metric]
    if ours < theirs - tolerance:
        return f"worse: {metric} {ours:.4f} < current {current.version} {theirs:.4f} - tolerance {tolerance}"
    return None
