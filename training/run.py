"""The training CLI's library side: `train` (data -> evaluated adapter) and `evaluate_model` (adapter or zero-shot
baseline -> report). Each CLI command calls one of these."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch

from qcat.classifier import DEFAULT_TAXONOMY, Prediction
from qcat.engine import Engine, EngineSpec
from qcat.errors import DataError, OutputExistsError, UsageError
from qcat.manifest import AdapterManifest, new_version, read_manifest, with_adapter_base
from qcat.pytorch.adapter import continue_lora, ensure_new, new_lora, save_adapter
from qcat.pytorch.engine import build_engine, load_engine
from qcat.pytorch.model import LoadedModel, load_configured_base
from qcat.routing import RoutingPolicy
from qcat.schemas.prompt import TRAINED_PROMPT_STYLE, prompt_format
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings
from qcat.training.boundary import open_set_statistics
from qcat.training.config import Recipe, RoutingGoal
from qcat.training.data import (
    Example,
    Scored,
    load_examples,
    report,
    resolve_conflicts,
    shown,
    stratified_split,
    write_examples,
)
from qcat.training.evaluate import write_report
from qcat.training.loop import check_reporters, fit
from qcat.training.open_set import choose_policy, with_unknown_label
from qcat.training.progress import counting

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TrainingSet:
    """What a run learns from, in memory: the labels, the rows it trains on, and the held-out rows that select its
    epoch, temperature and review threshold (never the test or gate set); plus the rows the conflict policy dropped.
    Commands read files into one (`read_training_set`); `retrain` builds one from base data and corrections."""

    taxonomy: Taxonomy
    train: list[Example]
    held_out: list[Example]
    dropped: list[Example] = field(default_factory=list)
    name: str = "data"
    """What reports call the data (the file name)."""


@dataclass(frozen=True)
class TrainRequest:
    out: Path
    recipe: Recipe = field(default_factory=Recipe)
    init_adapter: Path | None = None
    """Continue training this adapter (same base model and labels) instead of starting from scratch."""


def fingerprint_examples(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for e in sorted((e.text, e.label) for e in examples):
        digest.update(json.dumps(e).encode())
    return digest.hexdigest()[:16]


def elapsed(started: float) -> float:
    return round(time.perf_counter() - started, 1)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The softmax temperature that minimises held-out negative log-likelihood (temperature scaling)."""
    grid = np.exp(np.linspace(np.log(0.1), np.log(10.0), 61))
    losses = [float(torch.nn.functional.cross_entropy(logits / t, labels)) for t in grid]
    return float(grid[int(np.argmin(losses))])


MANIFEST_METRICS = ("accuracy", "macro_f1", "expected_calibration_error")
"""The report's figures an adapter manifest keeps (the registry's gate compares them)."""
SPEED_METRICS = ("train_seconds_per_epoch", "train_tokens_per_s", "first_epoch_seconds")
"""What `train` adds to the report's metrics about its own speed (`fit` explains each)."""


def calibrate_and_report(
    engine: Engine,
    held_out: list[Example],
    directory: Path,
    *,
    title: str,
    goal: RoutingGoal,
    distances: np.ndarray | None = None,
) -> tuple[Engine, dict[str, Any], RoutingPolicy]:
    """Fit the softmax temperature on `held_out`, choose the routing policy for `goal` there (with each question's
    open-set distance, when the adapter has statistics), then write the calibrated engine's report; returns that
    engine, the report's metrics and the routing policy."""
    labels = torch.tensor([engine.taxonomy.index(e.label) for e in held_out])
    logits, truncated = scoring_logits(engine, held_out)
    label_logits = torch.from_numpy(logits[:, : len(engine.taxonomy.labels)])
    engine = engine.with_temperature(fit_temperature(label_logits, labels))
    if distances is not None:
        logits = np.concatenate([logits, distances[:, None].astype(np.float32)], axis=1)
    scored = as_scored(held_out, engine.predictions(logits, truncated))
    policy = choose_policy(scored, engine.taxonomy, goal)
    return engine, write_report(scored, engine.taxonomy, directory, title=title, routing=policy), policy


SCORING_CHUNK = 256
"""Questions classified per call when scoring a data set: large enough to batch well, small enough to show progress."""


def scoring_logits(engine: Engine, examples: list[Example]) -> tuple[np.ndarray, list[bool]]:
    """Every example's label logits and whether it was truncated, with a progress bar (a Banking77 test set takes
    minutes on a CPU)."""
    parts, truncated = [], []
    with counting(f"classifying {len(examples)} questions", len(examples)) as advance:
        for start in range(0, len(examples), SCORING_CHUNK):
            encoded = engine.encode([e.text for e in examples[start : start + SCORING_CHUNK]])
            parts.append(engine.logits(encoded.ids))
            truncated += encoded.truncated
            advance(len(encoded.ids))
    return np.concatenate(parts), truncated


def as_scored(examples: list[Example], predictions: list[Prediction]) -> list[Scored]:
    return [
        Scored(e.text, e.label, p.label, p.confidence, p.distance) for e, p in zip(examples, predictions, strict=True)
    ]


def score(engine: Engine, examples: list[Example]) -> list[Scored]:
    """Classify every example (`scoring_logits`, then the engine's predictions)."""
    return as_scored(examples, engine.predictions(*scoring_logits(engine, examples)))


def read_training_set(
    data: Path,
    recipe: Recipe,
    *,
    taxonomy: Path | None = None,
    eval_data: Path | None = None,
    init_adapter: Path | None = None,
) -> TrainingSet:
    """The training set files describe: `data`, split unless `eval_data` is the held-out set; the labels of
    `taxonomy`, else of the adapter a warm start continues (in its order), else the data's own."""
    examples = load_examples(data)
    if taxonomy is not None:
        labels = Taxonomy.from_file(taxonomy)
    elif init_adapter is not None:
        labels = read_manifest(init_adapter).taxonomy
    else:
        labels = Taxonomy.from_names(sorted({e.label for e in examples}))
    held_out = load_examples(eval_data) if eval_data else None
    return training_set(examples, labels, recipe, held_out=held_out, name=data.name)


def training_set(
    examples: list[Example], taxonomy: Taxonomy, recipe: Recipe, *, held_out: list[Example] | None, name: str
) -> TrainingSet:
    """Rows in memory, checked before any model loads: conflicts resolved by the recipe's policy, a stratified split
    of the recipe's share unless `held_out` is given, errors raised and warnings logged."""
    check_reporters(recipe.config.report_to)
    if held_out is not None:
        train_rows, held_out, dropped = resolve_conflicts(examples, held_out, recipe.conflicts)
    else:
        examples, _, dropped = resolve_conflicts(examples, [], recipe.conflicts)
        train_rows, held_out = stratified_split(examples, eval_fraction=recipe.eval_fraction, seed=recipe.config.seed)
    data_report = report(train_rows, taxonomy, eval_examples=held_out)
    if dropped:
        rows = ", ".join(f"{e.source} ({e.label})" for e in dropped[:5]) + (" ..." if len(dropped) > 5 else "")
        data_report.warnings.append(f"--conflicts {recipe.conflicts} dropped {len(dropped)} rows: {rows}")
    for warning in data_report.warnings:
        log.warning("data", warning=warning)
    data_report.raise_on_errors()
    problems = check_goal(with_unknown_label(recipe.routing, taxonomy), taxonomy, held_out)
    if problems:
        raise UsageError("; ".join(problems))
    return TrainingSet(taxonomy, train_rows, held_out, dropped, name)


def check_goal(goal: RoutingGoal, taxonomy: Taxonomy, held_out: list[Example]) -> list[str]:
    """What makes the routing goal impossible on this data."""
    errors = []
    if goal.unknown_label is not None and goal.unknown_label not in taxonomy.names:
        errors.append(f"--unknown-label {goal.unknown_label!r} is not one of the labels ({shown(taxonomy.names)})")
    if goal.unknown_recall is not None and goal.review_coverage is not None:
        errors.append("--unknown-recall and --review-coverage are two goals: give one")
    if goal.unknown_recall is not None:
        if goal.unknown_label is None:
            errors.append("--unknown-recall needs --unknown-label (its held-out rows are the unknown questions)")
        elif not any(e.label == goal.unknown_label for e in held_out):
            errors.append(
                f"no held-out row carries --unknown-label {goal.unknown_label!r}: --unknown-recall cannot be measured"
            )
    return errors


def train(
    data: TrainingSet, request: TrainRequest, settings: EngineSettings, base: LoadedModel | None = None
) -> tuple[Path, dict[str, Any]]:
    """Fine-tune on `data`, calibrate, evaluate and save the adapter (with its report) to request.out.

    `base`, if given, is the settings' base model already loaded; it is trained in place.
    """
    started = time.perf_counter()
    ensure_new(request.out)  # before hours of training, not at the save
    recipe, taxonomy, train_rows, held_out = request.recipe, data.taxonomy, data.train, data.held_out
    torch.manual_seed(recipe.config.seed)
    base = base if base is not None else load_configured_base(with_adapter_base(settings, request.init_adapter))
    log.info("base model ready", model=base.name, seconds=elapsed(started))
    parent = None
    goal = with_unknown_label(recipe.routing, taxonomy)
    if request.init_adapter is not None:
        model, parent = continue_lora(base, request.init_adapter, taxonomy)
        if goal.unknown_label is None:  # a warm start keeps its 'none of these' label
            goal = replace(goal, unknown_label=parent.routing.unknown_label)
    else:
        model = new_lora(base, taxonomy, recipe.lora)
    spec = EngineSpec(taxonomy, prompt_format(taxonomy, TRAINED_PROMPT_STYLE), recipe.max_question_tokens)
    # padded, eager passes: the model is an unmerged LoRA, and training replays its own steps (training/graphs.py)
    engine = build_engine(base, spec, EngineSettings(batch_size=settings.batch_size, packed=False, cuda_graphs=False))
    work = request.out.parent / f".{request.out.name}.work"
    speed = fit(model, engine, train_rows, held_out, work, recipe.config)
    log.info("trained", epochs=speed["epochs_run"], seconds=elapsed(started))
    model.eval()
    stats, distances = open_set_statistics(base.lm, engine, train_rows, held_out) if recipe.open_set else (None, None)
    title = f"adapter on {data.name}"
    engine, metrics, routing = calibrate_and_report(
        engine, held_out, work / "report", title=title, goal=goal, distances=distances
    )
    log.info("calibrated and evaluated on the held-out rows", seconds=elapsed(started))
    manifest = AdapterManifest(
        version=new_version(),
        taxonomy=taxonomy,
        base_model=base.name,
        base_fingerprint=base.fingerprint,
        max_question_tokens=recipe.max_question_tokens,
        temperature=engine.temperature,
        routing=routing,
        metrics={key: metrics[key] for key in MANIFEST_METRICS},
        data_fingerprint=fingerprint_examples(train_rows),
        parent_version=parent.version if parent else None,
        eval_fingerprint=fingerprint_examples(held_out),
    )
    if data.dropped:
        write_examples(data.dropped, work / "report" / "dropped-rows.jsonl", sources=True)
    directory = save_adapter(model, manifest, request.out, stats)
    (work / "report").rename(directory / "report")
    (work / "metrics.csv").rename(directory / "report" / "training.csv")
    if (work / "runs").exists():
        (work / "runs").rename(directory / "report" / "runs")
    shutil.rmtree(work, ignore_errors=True)  # checkpoints: the adapter directory now holds the best one
    log.info("adapter saved", path=str(directory), seconds=elapsed(started))
    return directory, metrics | {key: speed[key] for key in SPEED_METRICS}


def check_report_folder(report_dir: Path, *, overwrite: bool) -> None:
    """Before anything is classified: --report must be a folder that can be written, and empty unless --overwrite."""
    if report_dir.exists() and not report_dir.is_dir():
        raise OutputExistsError(f"--report {report_dir} is a file; give a folder for the report")
    if report_dir.is_dir() and any(report_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{report_dir} already holds files; pick a new --report folder or pass --overwrite")
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        probe = report_dir / ".qcat-write-check"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise DataError(f"cannot write the report to {report_dir}: {error.strerror or error}") from error


def evaluate_model(
    data: Path, report_dir: Path, settings: EngineSettings, *, overwrite: bool = False
) -> dict[str, Any]:
    """Evaluate an adapter (settings.adapter) or, without one, the base model zero-shot, on labeled data. Zero-shot
    without a taxonomy ranks the default labels if the data's are among them, else the data's own labels. Questions
    whose label is not one of the engine's are unknown questions: the report measures where they end (open set)."""
    check_report_folder(report_dir, overwrite=overwrite)
    examples = load_examples(data)
    taxonomy = None
    if settings.adapter is None and settings.taxonomy is None:
        labels = sorted({e.label for e in examples})
        if not set(labels) <= set(Taxonomy.from_file(DEFAULT_TAXONOMY).names):
            log.info("zero-shot over the data's own labels", labels=len(labels), hint="--taxonomy to choose them")
            taxonomy = Taxonomy.from_names(labels)
    engine = load_engine(settings, taxonomy=taxonomy)
    names = engine.taxonomy.names
    outside = sorted({e.label for e in examples} - set(names))
    if len(outside) == len({e.label for e in examples}):
        raise DataError(f"no row of {data} carries one of the {len(names)} labels it is evaluated on ({shown(names)})")
    if outside:
        unknown = sum(e.label in outside for e in examples)
        log.info("labels outside the taxonomy: scored as unknown questions", rows=unknown, labels=shown(outside))
    report(examples, Taxonomy.from_names([*names, *outside])).raise_on_errors()
    precision = "" if settings.quantize == "none" else f", {settings.quantize}"
    title = f"{engine.adapter_version or 'zero-shot baseline'} ({engine.model_name}{precision}) on {data.name}"
    return write_report(score(engine, examples), engine.taxonomy, report_dir, title=title, routing=engine.routing)
