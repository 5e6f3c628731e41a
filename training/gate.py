"""The promotion gate's scoring: a candidate and the current adapter answer the same gate set, row by row, and the
registry decides on the pair (`qcat.gate`). Each version's answers are kept in the registry per gate set, so the
current adapter is scored once per gate set, not at every promotion, and a version trained on another held-out split
(another seed, last night's run) is still compared on the same rows.
"""

from __future__ import annotations

import structlog

from qcat.gate import GateScores, Verdict, gate_fingerprint, paired_verdict
from qcat.manifest import read_manifest, with_adapter_base
from qcat.pytorch.engine import load_engine
from qcat.pytorch.model import LoadedModel, load_configured_base, private_copy
from qcat.registry import DEFAULT_TOLERANCE, Decision, Registry
from qcat.settings import EngineSettings
from qcat.training.data import Example
from qcat.training.run import score

log = structlog.get_logger(__name__)


def scores_on(
    registry: Registry, version: str, gate: list[Example], settings: EngineSettings, base: LoadedModel | None
) -> GateScores:
    """`version`'s answers on `gate`: kept ones if the registry has them, else scored now and kept."""
    fingerprint = gate_fingerprint([(e.text, e.label) for e in gate])
    kept = registry.gate_scores(version, fingerprint)
    if kept is not None and len(kept.correct) == len(gate):
        return kept
    adapter = registry.path(version)
    model = private_copy(base) if base is not None else None
    engine = load_engine(with_adapter_base(settings, adapter).model_copy(update={"adapter": adapter}), base=model)
    scored = score(engine, gate)
    scores = GateScores(version, fingerprint, tuple(s.predicted == s.gold for s in scored))
    registry.record_gate(scores)
    log.info("scored on the gate set", version=version, gate=fingerprint, accuracy=round(scores.accuracy, 4))
    return scores


def common_gate(registry: Registry, candidate: str, current: str) -> tuple[GateScores, GateScores] | None:
    """Kept answers of both versions on one gate set, if the registry has any (no model needed then)."""
    for folder in sorted(registry.fs.glob(f"{registry.root}/gates/*")):
        gate = folder.rstrip("/").rsplit("/", 1)[-1]
        ours, theirs = registry.gate_scores(candidate, gate), registry.gate_scores(current, gate)
        if ours is not None and theirs is not None:
            return ours, theirs
    return None


def gated_promotion(
    registry: Registry,
    version: str,
    gate: list[Example] | None,
    settings: EngineSettings,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    base: LoadedModel | None = None,
) -> tuple[Decision, Verdict | None]:
    """Promote `version` through the paired gate: on `gate` (both versions scored on it, or their kept answers), else
    on a gate set both were scored on before, else by their manifests' metrics (the registry's own rule)."""
    current = registry.current()
    if current is None or current == version or force:
        return registry.promote(version, force=force, tolerance=tolerance), None
    pair: tuple[GateScores, GateScores] | None
    if gate is not None:
        base = base or load_configured_base(with_adapter_base(settings, registry.path(version)))
        same_base = read_manifest(registry.path(current)).base_fingerprint == base.fingerprint
        pair = (
            scores_on(registry, version, gate, settings, base),
            scores_on(registry, current, gate, settings, base if same_base else None),
        )
    else:
        pair = common_gate(registry, version, current)
    if pair is None:
        return registry.promote(version, tolerance=tolerance), None
    verdict = paired_verdict(pair[0], pair[1], tolerance)
    return registry.promote(version, verdict=verdict, tolerance=tolerance), verdict
