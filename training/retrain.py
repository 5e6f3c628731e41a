"""`qcat retrain`: base data + logged corrections -> a candidate adapter -> the paired gate, night after night.

Corrections override base rows with the same text (conflicts are counted and reported); a correction whose label is
outside the taxonomy is reported and skipped; a correction of a question the gate set holds is kept out of training
(and counted), or the gate would judge what was learned from it. A stable slice of the corrections (by a hash of
`event_id`, so reruns agree) is held out of training too. Selection (epoch, temperature, review threshold, open-set
boundary) uses a split of base data + corrections, never the gate set. The candidate must then be not worse than the
current adapter beyond the tolerance, paired row by row, on the held-out corrections and on the fixed gate set
(`--eval`; `qcat.gate`): the current adapter is scored on the gate set once and its answers kept, so a retrain never
ends in "not comparable". Training starts from scratch on the merged data with the current adapter's taxonomy, or,
with `from_current`, from the current adapter's weights.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from qcat.corrections import CorrectionStore
from qcat.gate import GateScores, paired_verdict
from qcat.manifest import read_manifest, with_adapter_base
from qcat.pytorch.engine import load_engine
from qcat.pytorch.model import LoadedModel, load_configured_base, private_copy
from qcat.registry import DEFAULT_TOLERANCE, Registry
from qcat.schemas.events import CorrectionEvent
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings
from qcat.training.config import Recipe
from qcat.training.data import Example, load_examples
from qcat.training.gate import gated_promotion
from qcat.training.open_set import goal_of
from qcat.training.run import TrainRequest, score, train, training_set
from qcat.training.soup import train_soup

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RetrainRequest:
    data: Path
    corrections: Path
    eval_data: Path
    registry: str  # a directory or an fsspec URL
    work: Path
    taxonomy: Path | None = None
    from_current: bool = False
    """Start from the current adapter's weights (warm start) instead of from scratch."""
    holdout_fraction: float = 0.2
    tolerance: float = DEFAULT_TOLERANCE
    force: bool = False
    recipe: Recipe = field(default_factory=Recipe)


@dataclass(frozen=True)
class Merged:
    train: list[Example]
    holdout: list[Example]
    conflicts: int


def held_out(event: CorrectionEvent, fraction: float) -> bool:
    digest = hashlib.sha256(event.event_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


def merge(base: list[Example], corrections: list[CorrectionEvent], holdout_fraction: float) -> Merged:
    """Corrections replace base rows of the same text; held-out corrections leave training entirely."""
    holdout = [c for c in corrections if held_out(c, holdout_fraction)]
    if corrections and not holdout and len(corrections) >= 2:
        holdout = [corrections[-1]]  # a tiny store still gets a check
    held = {_key(c.text) for c in holdout}
    learn = {_key(c.text): c for c in corrections if _key(c.text) not in held}
    conflicts = sum(1 for e in base if (c := learn.get(_key(e.text))) is not None and c.label != e.label)
    rows = [e for e in base if _key(e.text) not in held and _key(e.text) not in learn]
    rows += [Example(c.text, c.label, f"correction:{c.correction_id}") for c in learn.values()]
    return Merged(rows, [Example(c.text, c.label, f"correction:{c.correction_id}") for c in holdout], conflicts)


def retrain(request: RetrainRequest, settings: EngineSettings) -> dict[str, Any]:
    """Train and gate a candidate; the summary's `promoted` says whether the registry's current pointer moved, and
    its `gate` gives the paired figures either way."""
    registry = Registry(request.registry)
    current = registry.current_path()
    current_manifest = read_manifest(current) if current else None
    gate = load_examples(request.eval_data)
    base_rows = load_examples(request.data)
    if request.taxonomy is not None:
        taxonomy = Taxonomy.from_file(request.taxonomy)
    elif current_manifest is not None:
        taxonomy = current_manifest.taxonomy
    else:
        taxonomy = Taxonomy.from_names(sorted({e.label for e in base_rows}))
    sorted_out = sort_corrections(CorrectionStore(request.corrections).latest(), taxonomy, gate)
    merged = merge(base_rows, sorted_out.usable, request.holdout_fraction)
    if merged.conflicts:
        log.warning("corrections override base labels", conflicts=merged.conflicts)
    shutil.rmtree(request.work, ignore_errors=True)
    request.work.mkdir(parents=True)
    # the current adapter's routing goal and 'none of these' label carry over to its successor
    recipe = replace(request.recipe, routing=goal_of(current_manifest.routing)) if current_manifest else request.recipe
    # selection (epoch, temperature, review threshold, boundary) on a split of base data + corrections, never the gate
    data = training_set(merged.train, taxonomy, recipe, held_out=None, name="base data + corrections")
    settings = with_adapter_base(settings, current)  # no base model asked for: the current adapter's
    base = load_configured_base(settings)  # once: training and every scoring work on private copies
    candidate = TrainRequest(
        out=request.work / "candidate", recipe=recipe, init_adapter=current if request.from_current else None
    )
    if recipe.seeds > 1:
        candidate_dir, metrics = train_soup(data, candidate, settings, base=base)
    else:
        candidate_dir, metrics = train(data, candidate, settings, base=private_copy(base))
    version = registry.add(candidate_dir).version
    summary: dict[str, Any] = {
        "version": version,
        "previous": current.name if current else None,
        "train_examples": len(merged.train),
        "corrections": len(sorted_out.usable),
        "corrections_outside_taxonomy": sorted_out.outside_labels,
        "corrections_in_gate_set": len(sorted_out.in_gate),
        "corrections_held_out": len(merged.holdout),
        "conflicts": merged.conflicts,
        "held_out_accuracy": metrics["accuracy"],
    }
    if current is not None and merged.holdout:
        check = paired_verdict(
            answers(registry, version, merged.holdout, settings, base),
            answers(registry, current.name, merged.holdout, settings, base),
            request.tolerance,
        )
        summary["held_out_corrections"] = check.as_dict()
        if not check.promote:
            return summary | {"promoted": False, "reason": f"held-out corrections: {check.reason}"}
    decision, verdict = gated_promotion(
        registry, version, gate, settings, tolerance=request.tolerance, force=request.force, base=base
    )
    if verdict is not None:
        summary["gate"] = verdict.as_dict()
    return summary | {"promoted": decision.promoted, "reason": decision.reason}


@dataclass(frozen=True)
class SortedCorrections:
    usable: list[CorrectionEvent]
    in_gate: list[CorrectionEvent]
    """Corrections of questions the gate set holds: kept out of training, or the gate would judge what was learned."""
    outside_labels: dict[str, int]
    """Labels outside the taxonomy, with how many corrections carried each: reported and skipped."""


def sort_corrections(corrections: list[CorrectionEvent], taxonomy: Taxonomy, gate: list[Example]) -> SortedCorrections:
    names, gate_texts = set(taxonomy.names), {_key(e.text) for e in gate}
    outside = Counter(c.label for c in corrections if c.label not in names)
    if outside:
        log.warning("corrections with labels outside the taxonomy skipped", labels=dict(outside))
    inside = [c for c in corrections if c.label in names]
    in_gate = [c for c in inside if _key(c.text) in gate_texts]
    if in_gate:
        log.info("corrections of gate-set questions kept out of training", corrections=len(in_gate))
    usable = [c for c in inside if _key(c.text) not in gate_texts]
    return SortedCorrections(usable, in_gate, dict(outside))


def answers(
    registry: Registry, version: str, examples: list[Example], settings: EngineSettings, base: LoadedModel
) -> GateScores:
    """`version`'s answers on `examples` (not kept: held-out corrections change every night)."""
    adapter = registry.path(version)
    engine = load_engine(settings.model_copy(update={"adapter": adapter}), base=private_copy(base))
    scored = score(engine, examples)
    return GateScores(version, "held-out-corrections", tuple(s.predicted == s.gold for s in scored))
