"""The adapter registry: immutable adapter versions and an atomically switched "current" pointer, in a local
directory or, through fsspec, at an object-store URL (`s3://bucket/qcat`, `gs://...`; install that store's fsspec
package, e.g. s3fs, gcsfs).

    <root>/versions/<version>/   adapter weights (safetensors), qcat-manifest.json, report/
    <root>/current.json          {"version": ...}: written beside, then moved into place (a rename on a local disk,
                                 a single-object copy on a store: readers see the old or the new, never half)
    <root>/history.jsonl         every promotion and rollback, so a rollback knows what came before
    <root>/gates/<set>/<v>.json  each version's answers on a gate set (right or wrong, row by row)

A version is written under a hidden staging name and moved into place, so listings never show half an adapter.
Adapters are loaded from local files: a store's versions are downloaded once into a local cache (versions are
immutable, so a cached copy never goes stale). A version is a name (`schemas.events.VERSION_PATTERN`), and what
`path` returns stays inside the registry: a version folder that is, or holds, a symbolic link is refused, so nobody
who can only name a version can make a worker load files from elsewhere.

`promote` refuses a candidate that a paired comparison on one gate set finds worse than the current adapter beyond a
tolerance (`qcat.gate`; the answers of each version on each gate set are kept under `gates/`), unless forced.

Writers take turns: `add`, `promote` and `rollback` hold the registry's lock (`.lock`: a file lock on a local disk;
on a store, a lease object created only if absent, which is atomic where the store supports conditional writes and
taken over once stale). A promotion appends to the history before it moves `current.json`, so a crash between the
two leaves the old version current and an unused history entry, never a current version the history cannot roll
back from. A damaged `current.json` or history line is reported with its repair (docs/feedback-loop.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import filelock
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from qcat.errors import AdapterError, OutputExistsError, RegistryError
from qcat.gate import GateScores, Verdict
from qcat.manifest import MANIFEST, AdapterManifest, parse_manifest, read_manifest
from qcat.schemas.events import VERSION_PATTERN

DEFAULT_METRIC = "accuracy"
DEFAULT_TOLERANCE = 0.005
LOCK_TIMEOUT = 30.0
"""Seconds a writer waits for another one's promote, rollback or add to finish."""
STALE_STAGING = 600.0
"""A staged write older than this was left by a writer that died; the next writer removes it."""
STAGED = re.compile(r"\.[^/]+\.[0-9a-f]{32}")
STALE_LEASE = 120.0
"""A store's lease older than this was left by a writer that died; the next writer takes it over."""


@dataclass(frozen=True)
class Decision:
    promoted: bool
    version: str
    previous: str | None
    reason: str


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qcat" / "registry"


class Registry:
    def __init__(self, root: str | Path, cache: Path | None = None) -> None:
        self.url = str(root)
        try:
            self.fs, self.root = url_to_fs(self.url)
        except (ImportError, ValueError) as error:
            raise RegistryError(f"cannot open the registry {self.url}: {error}") from error
        self.local = isinstance(self.fs, LocalFileSystem)
        self.versions = f"{self.root}/versions"
        self.cache = (cache or default_cache()) / hashlib.sha256(self.url.encode()).hexdigest()[:16]

    def add(self, adapter: Path) -> AdapterManifest:
        """Copy a trained adapter directory into the registry under its manifest's version."""
        manifest = read_manifest(adapter)
        self.clean_staging()
        target = f"{self.versions}/{manifest.version}"
        taken = OutputExistsError(f"version {manifest.version} is already registered; versions are immutable", target)
        if self.fs.exists(target):
            raise taken
        staging = f"{self.versions}/.{manifest.version}.{uuid.uuid4().hex}"
        self.fs.makedirs(self.versions, exist_ok=True)
        try:
            self.fs.put(str(adapter), staging, recursive=True)
        except OSError as error:
            with contextlib.suppress(OSError):
                self.fs.rm(staging, recursive=True)
            raise RegistryError(f"cannot copy {adapter} into {self.url}: {error}; nothing was registered") from error
        try:
            with self._locked():
                if self.fs.exists(target):  # registered while this copy was uploading
                    raise taken
                self.fs.mv(staging, target, recursive=True)
        finally:
            if self.fs.exists(staging):
                self.fs.rm(staging, recursive=True)
        return manifest

    def exists(self) -> bool:
        return bool(self.fs.isdir(self.root))

    def names(self) -> list[str]:
        """Registered version names (whether or not their manifests are valid)."""
        if not self.fs.isdir(self.versions):
            return []
        names = [name.rstrip("/").rsplit("/", 1)[-1] for name in self.fs.ls(self.versions, detail=False)]
        return sorted(name for name in names if not name.startswith("."))

    def scan(self) -> tuple[list[AdapterManifest], dict[str, str]]:
        """The valid versions' manifests, oldest first, and why each other version is unusable: one damaged
        version must not hide the rest."""
        manifests, broken = [], {}
        for name in self.names():
            try:
                manifests.append(self._manifest(name))
            except AdapterError as error:
                broken[name] = str(error)
        return sorted(manifests, key=lambda m: m.created_at), broken

    def manifests(self) -> list[AdapterManifest]:
        return self.scan()[0]

    def _manifest(self, version: str) -> AdapterManifest:
        where = f"{self.versions}/{version}"
        try:
            return parse_manifest(self.fs.cat_file(f"{where}/{MANIFEST}"), where)
        except FileNotFoundError as error:
            raise AdapterError(f"{where} is not a qcat adapter: {MANIFEST} is missing") from error

    def _check_known(self, version: str) -> None:
        _check_name(version)
        if not self.fs.isdir(f"{self.versions}/{version}"):
            known = self.names()
            raise RegistryError(f"no adapter version {version!r} in {self.url}; known: {known}")

    def path(self, version: str) -> Path:
        """A local directory holding the version: the registry's own on a local disk, else a cached download (a
        cached version is served without asking the store again: versions are immutable)."""
        if self.local:
            self._check_known(version)
            return _without_links(Path(self.versions) / version)
        _check_name(version)
        cached = self.cache / version
        if cached.is_dir():
            return cached
        self._check_known(version)
        self.cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.cache, prefix=f".{version}."))
        self.fs.get(f"{self.versions}/{version}", str(staging / version), recursive=True)
        with contextlib.suppress(OSError):  # another process cached it first: the same immutable version
            (staging / version).rename(cached)
        shutil.rmtree(staging, ignore_errors=True)
        return cached

    def show(self, version: str) -> AdapterManifest:
        self._check_known(version)
        return self._manifest(version)

    def current(self) -> str | None:
        try:
            pointer = self.fs.cat_file(f"{self.root}/current.json")
        except FileNotFoundError:
            return None
        try:
            version = json.loads(pointer)["version"]
            _check_name(version)
        except (ValueError, KeyError, TypeError, RegistryError) as error:
            raise RegistryError(
                f"{self.url}/current.json is damaged ({type(error).__name__}); repair: delete it, then run `qcat "
                "adapters promote VERSION --force` with the version that should serve (history.jsonl's last line "
                "names the last one promoted)"
            ) from error
        return str(version)

    def current_path(self) -> Path | None:
        version = self.current()
        return self.path(version) if version else None

    def promote(
        self,
        version: str,
        *,
        verdict: Verdict | None = None,
        metric: str = DEFAULT_METRIC,
        tolerance: float = DEFAULT_TOLERANCE,
        force: bool = False,
    ) -> Decision:
        """Make `version` current if the gate says so: the paired `verdict` of it against the current version on one
        gate set (`qcat.gate`), else its manifest's metrics against the current one's when both were measured on the
        same eval set."""
        with self._locked():
            return self._promote(version, verdict=verdict, metric=metric, tolerance=tolerance, force=force)

    def _promote(
        self, version: str, *, verdict: Verdict | None, metric: str, tolerance: float, force: bool
    ) -> Decision:
        candidate = self.show(version)
        previous = self.current()
        if previous == version:
            return Decision(False, version, previous, f"{version} is already current")
        if previous is not None and not force:
            if verdict is not None and (verdict.candidate, verdict.current) != (version, previous):
                why = f"the verdict compares {verdict.candidate} with {verdict.current}, but {previous} is current now"
                return Decision(False, version, previous, why)
            refusal = _refusal(candidate, self.show(previous), metric, tolerance) if verdict is None else None
            if refusal or (verdict is not None and not verdict.promote):
                return Decision(False, version, previous, refusal or (verdict.reason if verdict else ""))
        self._point_to(version, action="promote", previous=previous, forced=force)
        if verdict is not None and not force:
            return Decision(True, version, previous, f"promoted: {verdict.reason}")
        score = candidate.metrics.get(metric)
        how = f"{metric} {score:.4f}" if isinstance(score, float) else "no metric"
        return Decision(True, version, previous, f"promoted ({how})" + (" by force" if force else ""))

    def record_gate(self, scores: GateScores) -> None:
        """Keep a version's answers on a gate set, so a later promotion compares with them without scoring again."""
        _check_name(scores.version)
        self.replace_file(f"gates/{scores.gate}/{scores.version}.json", scores.to_json())

    def gate_scores(self, version: str, gate: str) -> GateScores | None:
        try:
            return GateScores.from_json(self.fs.cat_file(f"{self.root}/gates/{gate}/{version}.json"))
        except FileNotFoundError:
            return None

    def rollback(self) -> Decision:
        """Point back to the version that was current before the current one."""
        with self._locked():
            return self._rollback()

    def _rollback(self) -> Decision:
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
        self._check_known(target)
        self._point_to(target, action="rollback", previous=current, forced=True)
        return Decision(True, target, current, f"rolled back from {current}")

    def clean_staging(self) -> None:
        """Remove what writers that died (a full disk, SIGKILL) left staged: hidden `.<name>.<hex>` entries older
        than `STALE_STAGING`, so that a writer still at work keeps its own."""
        for folder in (self.root, self.versions):
            try:
                entries = self.fs.ls(folder, detail=False) if self.fs.isdir(folder) else []
            except OSError:
                continue
            for entry in entries:
                name = entry.rstrip("/").rsplit("/", 1)[-1]
                if not STAGED.fullmatch(name):
                    continue
                with contextlib.suppress(OSError, NotImplementedError, FileNotFoundError):
                    if time.time() - self.fs.modified(entry).timestamp() > STALE_STAGING:
                        self.fs.rm(entry, recursive=True)

    def _point_to(self, version: str, *, action: str, previous: str | None, forced: bool) -> None:
        """History first, then the pointer (see the module): a crash in between changes nothing that serves."""
        self.fs.makedirs(self.root, exist_ok=True)
        self.clean_staging()
        entry = {
            "at": datetime.now(UTC).isoformat(),
            "action": action,
            "version": version,
            "previous": previous,
            "forced": forced,
        }
        lines = [*self._history(), entry]  # rewritten whole: object stores cannot append
        self.replace_file("history.jsonl", "".join(json.dumps(line) + "\n" for line in lines).encode())
        self.replace_file("current.json", json.dumps({"version": version}).encode())

    def replace_file(self, name: str, content: bytes) -> None:
        """Write beside, then move into place: readers see the old file or the new one, never half of one. `name`
        is relative to the registry's root (`gates/<set>/<version>.json`)."""
        folder, _, base = f"{self.root}/{name}".rpartition("/")
        self.fs.makedirs(folder, exist_ok=True)
        staging = f"{folder}/.{base}.{uuid.uuid4().hex}"
        try:
            self.fs.pipe_file(staging, content)
            self.fs.mv(staging, f"{folder}/{base}")
        except OSError as error:
            with contextlib.suppress(OSError):
                self.fs.rm(staging)
            raise RegistryError(f"cannot write {self.url}/{name}: {error}; nothing was changed") from error

    def _history(self) -> list[dict[str, object]]:
        try:
            content = self.fs.cat_file(f"{self.root}/history.jsonl").decode("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        entries = []
        for number, line in enumerate(content.splitlines(), start=1):
            try:
                entry = json.loads(line) if line.strip() else None
            except ValueError:
                entry = {}
            if entry is None:
                continue
            if not isinstance(entry, dict) or not {"action", "version", "previous"} <= entry.keys():
                raise RegistryError(
                    f"{self.url}/history.jsonl line {number} is damaged (a torn write?); repair: delete that line "
                    "and retry. Nothing was changed; only rollback reads the history."
                )
            entries.append(entry)
        return entries

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time (see the module)."""
        self.fs.makedirs(self.root, exist_ok=True)
        if self.local:
            try:
                with filelock.FileLock(f"{self.root}/.lock", timeout=LOCK_TIMEOUT):
                    yield
            except filelock.Timeout as error:
                raise RegistryError(f"{self.url} stayed locked by another writer for {LOCK_TIMEOUT:.0f} s") from error
            return
        lease, mine = f"{self.root}/.lock", uuid.uuid4().hex.encode()
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                self.fs.pipe_file(lease, mine, mode="create")
                break
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError, NotImplementedError):
                    if time.time() - self.fs.modified(lease).timestamp() > STALE_LEASE:
                        self.fs.rm(lease)  # its writer died
                        continue
                if time.monotonic() > deadline:
                    raise RegistryError(
                        f"{self.url} stayed locked by another writer for {LOCK_TIMEOUT:.0f} s; if none is running, "
                        f"delete {lease}"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                if self.fs.cat_file(lease) == mine:
                    self.fs.rm(lease)


def _check_name(version: str) -> None:
    if not re.fullmatch(VERSION_PATTERN, version):
        raise RegistryError(f"{version[:200]!r} is not a version name (letters, digits, '.', '_', '-')")


def _without_links(directory: Path) -> Path:
    """`directory` if neither it nor anything in it is a symbolic link (one could point anywhere on the disk)."""
    if directory.is_symlink():
        raise RegistryError(f"{directory} is a symbolic link; registry versions are folders of their own")
    links = [path for path in directory.rglob("*") if path.is_symlink()]
    if links:
        raise RegistryError(f"{directory} holds symbolic links ({', '.join(map(str, links[:5]))}); copy the files in")
    return directory


def _refusal(candidate: AdapterManifest, current: AdapterManifest, metric: str, tolerance: float) -> str | None:
    """Why the candidate may not replace the current adapter, or None if it may."""
    if candidate.eval_fingerprint is None or candidate.eval_fingerprint != current.eval_fingerprint:
        return (
            f"{candidate.version}'s metrics come from another held-out set than the current {current.version}'s: "
            f"score both on one gate set (`qcat adapters promote {candidate.version} --gate FILE`; `qcat retrain` "
            "does it with --eval) or use --force"
        )
    if metric not in candidate.metrics or metric not in current.metrics:
        return f"{metric} is missing from the metrics of {candidate.version} or {current.version}"
    ours, theirs = candidate.metrics[metric], current.metrics[metric]
    if ours < theirs - tolerance:
        return f"worse: {metric} {ours:.4f} < current {current.version} {theirs:.4f} - tolerance {tolerance}"
    return None
