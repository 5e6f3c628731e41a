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

from qcat.adapter import continue_lora, ensure_new, new_lora, save_adapter
from qcat.classifier import DEFAULT_TAXONOMY, Prediction
from qcat.engine import Engine
from qcat.errors import DataError, OutputExistsError, UsageError
from qcat.lora import LoraSpec
from qcat.manifest import AdapterManifest, new_version, read_manifest, with_adapter_base
from qcat.model import LoadedModel, load_configured_base
from qcat.routing import RoutingPolicy
from qcat.schemas.prompt import MAX_QUESTION_TOKENS, TRAINED_PROMPT_STYLE, prompt_format
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings
from qcat.torch_engine import load_engine, torch_engine
from qcat.training.config import RoutingGoal, TrainConfig
from qcat.training.data import (
    ConflictPolicy,
    Example,
    load_examples,
    report,
    resolve_conflicts,
    shown,
    stratified_split,
    write_examples,
)
from qcat.training.evaluate import Scored, write_report
from qcat.training.loop import check_reporters, fit
from qcat.training.open_set import choose_policy
from qcat.training.progress import counting

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TrainRequest:
    data: Path
    out: Path
    taxonomy: Path | None = None
    eval_data: Path | None = None
    eval_fraction: float = 0.1
    max_question_tokens: int = MAX_QUESTION_TOKENS
    conflicts: ConflictPolicy = "error"
    init_adapter: Path | None = None
    """Continue training this adapter (same base model and labels) instead of starting from scratch."""
    lora: LoraSpec = field(default_factory=LoraSpec)
    config: TrainConfig = field(default_factory=TrainConfig)
    routing: RoutingGoal = field(default_factory=RoutingGoal)


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
    engine: Engine, held_out: list[Example], directory: Path, *, title: str, goal: RoutingGoal
) -> tuple[Engine, dict[str, Any], RoutingPolicy]:
    """Fit the softmax temperature on `held_out`, choose the review threshold for `goal` there, then write the
    calibrated engine's report; returns that engine, the report's metrics and the routing policy."""
    labels = torch.tensor([engine.taxonomy.index(e.label) for e in held_out])
    logits, truncated = scoring_logits(engine, held_out)
    engine = engine.with_temperature(fit_temperature(torch.from_numpy(logits), labels))
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
    return [Scored(e.text, e.label, p.label, p.confidence) for e, p in zip(examples, predictions, strict=True)]


def score(engine: Engine, examples: list[Example]) -> list[Scored]:
    """Classify every example (`scoring_logits`, then the engine's predictions)."""
    return as_scored(examples, engine.predictions(*scoring_logits(engine, examples)))


def prepare_data(request: TrainRequest) -> tuple[Taxonomy, list[Example], list[Example], list[Example]]:
    """The labels, training rows and held-out rows `request` describes, checked (before any model loads): errors
    stop here, warnings are logged. Also returns the rows the conflict policy dropped."""
    check_reporters(request.config.report_to)
    examples = load_examples(request.data)
    if request.taxonomy:
        taxonomy = Taxonomy.from_file(request.taxonomy)
    elif request.init_adapter:
        taxonomy = read_manifest(request.init_adapter).taxonomy  # a warm start keeps its labels and their order
    else:
        taxonomy = Taxonomy.from_names(sorted({e.label for e in examples}))
    if request.eval_data:
        train_rows, held_out, dropped = resolve_conflicts(examples, load_examples(request.eval_data), request.conflicts)
    else:
        examples, _, dropped = resolve_conflicts(examples, [], request.conflicts)
        train_rows, held_out = stratified_split(examples, eval_fraction=request.eval_fraction, seed=request.config.seed)
    data_report = report(train_rows, taxonomy, eval_examples=held_out)
    if dropped:
        rows = ", ".join(f"{e.source} ({e.label})" for e in dropped[:5]) + (" ..." if len(dropped) > 5 else "")
        data_report.warnings.append(f"--conflicts {request.conflicts} dropped {len(dropped)} rows: {rows}")
    for warning in data_report.warnings:
        log.warning("data", warning=warning)
    data_report.raise_on_errors()
    problems = check_goal(request.routing, taxonomy, held_out)
    if problems:
        raise UsageError("; ".join(problems))
    return taxonomy, train_rows, held_out, dropped


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
    request: TrainRequest, settings: EngineSettings, base: LoadedModel | None = None
) -> tuple[Path, dict[str, Any]]:
    """Report on the data, fine-tune, calibrate, evaluate and save the adapter (with its report) to request.out.

    `base`, if given, is the settings' base model already loaded; it is trained in place.
    """
    started = time.perf_counter()
    ensure_new(request.out)  # before hours of training, not at the save
    taxonomy, train_rows, held_out, dropped = prepare_data(request)
    torch.manual_seed(request.config.seed)
    base = base if base is not None else load_configured_base(with_adapter_base(settings, request.init_adapter))
    log.info("base model ready", model=base.name, seconds=elapsed(started))
    parent = None
    goal = request.routing
    if request.init_adapter is not None:
        model, parent = continue_lora(base, request.init_adapter, taxonomy)
        if goal.unknown_label is None:  # a warm start keeps its 'none of these' label
            goal = replace(goal, unknown_label=parent.routing.unknown_label)
    else:
        model = new_lora(base, taxonomy, request.lora)
    engine = torch_engine(
        base,
        taxonomy,
        prompt_format(taxonomy, TRAINED_PROMPT_STYLE),
        max_question_tokens=request.max_question_tokens,
        batch_size=settings.batch_size,
    )
    work = request.out.parent / f".{request.out.name}.work"
    speed = fit(model, engine, train_rows, held_out, work, request.config)
    log.info("trained", epochs=speed["epochs_run"], seconds=elapsed(started))
    model.eval()
    title = f"adapter on {request.data.name}"
    engine, metrics, routing = calibrate_and_report(engine, held_out, work / "report", title=title, goal=goal)
    log.info("calibrated and evaluated on the held-out rows", seconds=elapsed(started))
    manifest = AdapterManifest(
        version=new_version(),
        taxonomy=taxonomy,
        base_model=base.name,
        base_fingerprint=base.fingerprint,
        max_question_tokens=request.max_question_tokens,
        temperature=engine.temperature,
        routing=routing,
        metrics={key: metrics[key] for key in MANIFEST_METRICS},
        data_fingerprint=fingerprint_examples(train_rows),
        parent_version=parent.version if parent else None,
        eval_fingerprint=fingerprint_examples(held_out),
    )
    if dropped:
        write_examples(dropped, work / "report" / "dropped-rows.jsonl", sources=True)
    directory = save_adapter(model, manifest, request.out)
    (work / "report").rename(directory / "report")
    (work / "metrics.csv").rename(directory / "report" / "training.csv")
    if (work / "runs").exists():
        (work / "runs").rename(directory / "report" / "runs")
    shutil.rmtree(work, ignore_errors=True)  # checkpoints: the adapter directory now holds the best one
    log.info("adapter saved", path=str(directory), seconds=elapsed(started))
    return directory, metrics | {key: speed[key] for key in SPEED_METRICS}


def evaluate_model(
    data: Path, report_dir: Path, settings: EngineSettings, *, overwrite: bool = False
) -> dict[str, Any]:
    """Evaluate an adapter (settings.adapter) or, without one, the base model zero-shot, on labeled data. Zero-shot
    without a taxonomy ranks the default labels if the data's are among them, else the data's own labels. Questions
    whose label is not one of the engine's are unknown questions: the report measures where they end (open set)."""
    if report_dir.is_dir() and any(report_dir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{report_dir} already holds files; pick a new --report folder or pass --overwrite")
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
