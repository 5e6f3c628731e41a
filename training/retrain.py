"""`qcat retrain`: base data + logged corrections -> a candidate adapter -> the registry gate.

Corrections override base rows with the same text (conflicts are counted and reported). A stable slice of the
corrections (by a hash of `event_id`, so reruns agree) is held out of training; the candidate must label it at least as
well as the current adapter, and must pass the registry's gate on the fixed eval set (not worse beyond the tolerance).
Training starts from scratch on the merged data with the current adapter's taxonomy, or, with `from_current`, from
the current adapter's weights.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from qcat.corrections import CorrectionStore
from qcat.errors import DataError
from qcat.manifest import read_manifest, with_adapter_base
from qcat.pytorch.engine import load_engine
from qcat.pytorch.model import LoadedModel, load_configured_base, private_copy
from qcat.registry import DEFAULT_TOLERANCE, Registry
from qcat.schemas.events import CorrectionEvent
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings
from qcat.training.config import Recipe
from qcat.training.data import Example, load_examples
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


def _accuracy(settings: EngineSettings, base: LoadedModel, adapter: Path, examples: list[Example]) -> float | None:
    if not examples:
        return None
    engine = load_engine(settings.model_copy(update={"adapter": adapter}), base=private_copy(base))
    scored = score(engine, examples)
    return sum(s.gold == s.predicted for s in scored) / len(scored)


def retrain(request: RetrainRequest, settings: EngineSettings) -> dict[str, Any]:
    """Train and gate a candidate; the summary's `promoted` says whether the registry's current pointer moved."""
    registry = Registry(request.registry)
    current = registry.current_path()
    current_manifest = read_manifest(current) if current else None
    corrections = CorrectionStore(request.corrections).latest()
    merged = merge(load_examples(request.data), corrections, request.holdout_fraction)
    if merged.conflicts:
        log.warning("corrections override base labels", conflicts=merged.conflicts)
    shutil.rmtree(request.work, ignore_errors=True)
    request.work.mkdir(parents=True)
    if request.taxonomy is not None:
        taxonomy = Taxonomy.from_file(request.taxonomy)
    elif current_manifest is not None:
        taxonomy = current_manifest.taxonomy
    else:
        taxonomy = Taxonomy.from_names(sorted({e.label for e in merged.train}))
    unknown = {c.label for c in corrections} - set(taxonomy.names)
    if unknown:
        raise DataError(f"corrections use labels outside the taxonomy: {sorted(unknown)}")
    # the current adapter's routing goal and 'none of these' label carry over to its successor
    recipe = replace(request.recipe, routing=goal_of(current_manifest.routing)) if current_manifest else request.recipe
    data = training_set(
        merged.train, taxonomy, recipe, held_out=load_examples(request.eval_data), name="base data + corrections"
    )
    settings = with_adapter_base(settings, current)  # no base model asked for: the current adapter's
    base = load_configured_base(settings)  # once: training and both scorings work on private copies
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
        "corrections": len(corrections),
        "corrections_held_out": len(merged.holdout),
        "conflicts": merged.conflicts,
        "eval_accuracy": metrics["accuracy"],
        "current_eval_accuracy": current_manifest.metrics.get("accuracy") if current_manifest else None,
        "holdout_accuracy": _accuracy(settings, base, registry.path(version), merged.holdout),
        "current_holdout_accuracy": _accuracy(settings, base, current, merged.holdout) if current else None,
    }
    ours, theirs = summary["holdout_accuracy"], summary["current_holdout_accuracy"]
    if ours is not None and theirs is not None and ours < theirs:
        summary |= {"promoted": False, "reason": f"worse on held-out corrections: {ours:.4f} < current {theirs:.4f}"}
        return summary
    decision = registry.promote(version, tolerance=request.tolerance)
    return summary | {"promoted": decision.promoted, "reason": decision.reason}
