"""Adapter soups: adapters trained by one recipe with different seeds, averaged into one adapter.

Seeds of one recipe disagree on a few questions each, so a majority vote of several beats most of them
(docs/training.md). Averaging their weight updates (a
uniform "model soup", Wortsman et al. 2022: fine-tunes of one pretrained model averaged in weight space) aims at
that vote's accuracy at one adapter's serving cost, since the engine merges an adapter into the weights.

LoRA makes the average exact: the mean of the updates B_i A_i is the product of [B_1 ... B_N] / N and
[A_1; ...; A_N], a LoRA of rank N*r with the same scaling (alpha N*alpha). The label heads start from the same
zero-shot rows in every seed and are averaged.
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
import torch
from safetensors.torch import load_file, save_file

from qcat.errors import AdapterError
from qcat.manifest import CONFIG, WEIGHTS, new_version, read_manifest
from qcat.pytorch.adapter import ensure_new, file_sha256, staged_adapter
from qcat.pytorch.engine import load_engine
from qcat.pytorch.model import LoadedModel, load_configured_base, private_copy
from qcat.pytorch.open_set import STATS
from qcat.settings import EngineSettings
from qcat.training.boundary import open_set_statistics
from qcat.training.data import Example, report, write_examples
from qcat.training.open_set import goal_of
from qcat.training.run import (
    MANIFEST_METRICS,
    SPEED_METRICS,
    TrainingSet,
    TrainRequest,
    calibrate_and_report,
    fingerprint_examples,
    train,
)

log = structlog.get_logger(__name__)

SAME_MANIFEST = ("base_fingerprint", "taxonomy", "prompt_format_version", "prompt_style", "max_question_tokens")
SAME_CONFIG = ("r", "lora_alpha", "target_modules", "modules_to_save", "use_rslora", "use_dora")


def soup_weights(directories: Sequence[Path]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The averaged adapter's weights and peft config; the adapters must share base model, labels and LoRA shape."""
    config = _common_config(directories)
    states = [load_file(str(d / WEIGHTS)) for d in directories]
    n = len(states)
    weights: dict[str, torch.Tensor] = {}
    for key in states[0]:
        if any(key not in state for state in states[1:]):
            raise AdapterError(f"{key} is missing from some adapters: cannot average them")
        tensors = [state[key] for state in states]
        if key.endswith("lora_A.weight"):
            weights[key] = torch.cat(tensors, dim=0).contiguous()
        elif key.endswith("lora_B.weight"):
            weights[key] = (torch.cat(tensors, dim=1) / n).contiguous()
        else:  # the label head (and any other module saved whole)
            weights[key] = torch.stack(tensors).mean(dim=0)
    return weights, config | {"r": n * config["r"], "lora_alpha": n * config["lora_alpha"]}


def _common_config(directories: Sequence[Path]) -> dict[str, Any]:
    """The peft config the adapters share, after checking they can be averaged at all."""
    if len(directories) < 2:
        raise AdapterError("a soup needs at least two adapters")
    manifests = [read_manifest(d) for d in directories]
    for directory in directories:
        if not (directory / WEIGHTS).is_file() or not (directory / CONFIG).is_file():
            raise AdapterError(f"{directory} lacks {WEIGHTS} or {CONFIG}: not a complete qcat adapter")
    configs: list[dict[str, Any]] = [json.loads((d / CONFIG).read_text(encoding="utf-8")) for d in directories]
    for directory, manifest, config in zip(directories[1:], manifests[1:], configs[1:], strict=True):
        for key in SAME_MANIFEST:
            if getattr(manifest, key) != getattr(manifests[0], key):
                raise AdapterError(f"{directory} differs from {directories[0]} in {key}: cannot average them")
        for key in SAME_CONFIG:
            if not _same(config.get(key), configs[0].get(key)):
                raise AdapterError(f"{directory} differs from {directories[0]} in LoRA {key}: cannot average them")
    if any(configs[0].get(key) for key in ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern")):
        raise AdapterError("only plain LoRA adapters (no rsLoRA, DoRA or per-layer ranks) can be averaged")
    return configs[0]


def make_soup(
    directories: Sequence[Path],
    held_out: list[Example],
    out: Path,
    settings: EngineSettings,
    base: LoadedModel | None = None,
    *,
    name: str = "held-out rows",
    train: list[Example] | None = None,
) -> dict[str, Any]:
    """Average `directories` into a new adapter at `out`, calibrated and evaluated on `held_out` (rows none of them
    trained on, called `name` in the report) like `qcat train`; with the rows they trained on (`train`), it gets
    open-set statistics of its own (a soup's features are not its ingredients').

    Returns the evaluation's metrics. The adapter is staged beside `out` and renamed into place when complete.
    `base`, if given, is the settings' base model already loaded; the soup is merged into it.
    """
    base = base if base is not None else load_configured_base(settings)
    weights, config = soup_weights(directories)
    manifests = [read_manifest(d) for d in directories]
    examples = held_out
    report(examples, manifests[0].taxonomy).raise_on_errors()
    data = {m.data_fingerprint for m in manifests}
    manifest = manifests[0].model_copy(
        update={
            "version": new_version(),
            "data_fingerprint": data.pop() if len(data) == 1 else None,
            "parent_version": None,
            "ingredients": [m.version for m in manifests],
            "created_at": datetime.now(UTC),
            "open_set": None,
        }
    )
    with staged_adapter(out) as staged:
        save_file(weights, str(staged / WEIGHTS))
        (staged / CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")
        manifest.write(staged)  # the engine loads the adapter through its manifest, before it is calibrated
        engine = load_engine(settings.model_copy(update={"adapter": staged}), base=base)
        title = f"soup of {len(manifests)} adapters on {name}"
        goal = goal_of(manifests[0].routing)  # the ingredients share their recipe, their routing goal with it
        stats, distances = open_set_statistics(base.lm, engine, train, examples) if train else (None, None)
        engine, metrics, routing = calibrate_and_report(
            engine, examples, staged / "report", title=title, goal=goal, distances=distances
        )
        if stats is not None:
            stats.save(staged)
        manifest.model_copy(
            update={
                "temperature": engine.temperature,
                "routing": routing,
                "metrics": {key: metrics[key] for key in MANIFEST_METRICS},
                "eval_fingerprint": fingerprint_examples(examples),
                "open_set": file_sha256(staged / STATS) if stats is not None else None,
            }
        ).write(staged)
    return metrics


def train_soup(
    data: TrainingSet, request: TrainRequest, settings: EngineSettings, base: LoadedModel | None = None
) -> tuple[Path, dict[str, Any]]:
    """`qcat train --seeds N`: train seeds seed .. seed+N-1 of one recipe on `data` and average them into
    request.out (measured in docs/training.md).

    Every seed trains on the same rows and is selected on the same held-out rows, which calibrate and score the soup.
    The seeds' adapters (each with its report) stay in `<out>.seeds/` (removed if the run fails, so that it can
    simply be run again). Returns the soup's held-out metrics plus each seed's accuracy.
    `base`, if given, is the settings' base model already loaded; it is left as it is (each step works on a copy).
    """
    recipe = request.recipe
    if recipe.seeds < 2:
        raise AdapterError("a soup needs at least two seeds")
    out = ensure_new(request.out)
    folder = ensure_new(out.with_name(f"{out.name}.seeds"))
    folder.mkdir(parents=True)
    if data.dropped:
        write_examples(data.dropped, folder / "dropped-rows.jsonl", sources=True)
    try:
        base = base if base is not None else load_configured_base(settings)
        ingredients: list[Path] = []
        accuracy: dict[str, float] = {}
        speed: list[dict[str, Any]] = []
        for seed in range(recipe.config.seed, recipe.config.seed + recipe.seeds):
            seeded = replace(recipe, config=replace(recipe.config, seed=seed))
            directory, metrics = train(
                data, replace(request, out=folder / f"seed{seed}", recipe=seeded), settings, private_copy(base)
            )
            log.info("seed trained", seed=seed, accuracy=metrics["accuracy"], adapter=str(directory))
            ingredients.append(directory)
            accuracy[f"seed{seed}"] = metrics["accuracy"]
            speed.append(metrics)
        rows = data.train if recipe.open_set else None
        metrics = make_soup(ingredients, data.held_out, out, settings, private_copy(base), name=data.name, train=rows)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # nothing half-made left behind to block the next run
        raise
    typical = {key: statistics.median(run[key] for run in speed) for key in SPEED_METRICS}
    return out, metrics | typical | {"seeds": accuracy}


def _same(a: Any, b: Any) -> bool:
    """Equal, where lists (peft writes its target modules in any order) compare as sets."""
    return sorted(a) == sorted(b) if isinstance(a, list) and isinstance(b, list) else bool(a == b)
