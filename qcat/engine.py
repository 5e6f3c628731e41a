"""The classifier engine: questions in, labels out, one forward pass per micro-batch.

Questions are tokenized once, truncated to a token budget, sorted by length and cut into batches that are
right-padded only to their own longest row, so little compute goes to padding. Each batch is one forward pass of a
`Scorer`, the one step a backend provides (`qcat.pytorch` for PyTorch): only the labels' logits are computed.
The label is always a taxonomy label; a row whose logits are not finite raises `InferenceError` instead of producing
one. Nothing here imports torch: the steps every backend shares live once, here, and so does what an adapter's
manifest (or zero-shot) decides about an engine (`EngineSpec`).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import structlog

from qcat.classifier import Prediction
from qcat.errors import InferenceError
from qcat.manifest import AdapterManifest
from qcat.routing import RoutingPolicy
from qcat.schemas.prompt import ZERO_SHOT_PROMPT_STYLE, PromptFormat, clean_question, prompt_format
from qcat.schemas.taxonomy import Taxonomy

log = structlog.get_logger(__name__)


class Scorer(Protocol):
    """A backend's forward pass: float32 label logits, one row per token row (rows of any lengths; the scorer pads
    them, or packs them end to end)."""

    pads: bool  # whether a pass costs its rows times its longest row (padded), or only its tokens (packed)

    def __call__(self, rows: Sequence[Sequence[int]]) -> np.ndarray: ...


@dataclass(frozen=True)
class Encoded:
    """Token ids of whole prompts, and whether each question was cut to the budget."""

    ids: list[list[int]]
    truncated: list[bool]


@dataclass(frozen=True)
class EngineSpec:
    """What an engine answers and how, whatever runs its passes: an adapter's manifest decides it, or zero-shot."""

    taxonomy: Taxonomy
    prompt: PromptFormat
    max_question_tokens: int
    temperature: float = 1.0
    adapter_version: str | None = None
    routing: RoutingPolicy = field(default_factory=RoutingPolicy)

    @classmethod
    def for_adapter(cls, manifest: AdapterManifest) -> EngineSpec:
        return cls(
            manifest.taxonomy,
            prompt_format(manifest.taxonomy, manifest.prompt_style),
            manifest.max_question_tokens,
            manifest.temperature,
            manifest.version,
            manifest.routing,
        )

    @classmethod
    def zero_shot(cls, taxonomy: Taxonomy, max_question_tokens: int) -> EngineSpec:
        """The base model ranks the labels by their words: an instruction prompt, no calibration, the default
        routing."""
        return cls(taxonomy, prompt_format(taxonomy, ZERO_SHOT_PROMPT_STYLE), max_question_tokens)

    def template(self, tokenizer: Any) -> tuple[list[int], list[int]]:
        """The prompt's token ids before and after the question."""
        prefix: list[int] = tokenizer(self.prompt.prefix, add_special_tokens=False)["input_ids"]
        suffix: list[int] = tokenizer(self.prompt.suffix, add_special_tokens=False)["input_ids"]
        return prefix, suffix

    def longest_prompt(self, tokenizer: Any) -> int:
        """The most tokens a prompt of this engine has: the template around a question cut to the budget."""
        prefix, suffix = self.template(tokenizer)
        return len(prefix) + self.max_question_tokens + len(suffix)


class Engine:
    """A loaded classifier (`qcat.pytorch.engine.load_engine` builds one); `classify` is safe to call from one
    thread. `batch_size` and `batch_tokens` bound each forward pass (the backend's serving plan chose them)."""

    def __init__(
        self, tokenizer: Any, spec: EngineSpec, scorer: Scorer, *, model_name: str, batch_size: int, batch_tokens: int
    ) -> None:
        self.tokenizer = tokenizer
        self.spec = spec
        self.taxonomy = spec.taxonomy
        self.prompt = spec.prompt
        self.scorer = scorer
        self.max_question_tokens = spec.max_question_tokens
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self._model_name = model_name
        self._prefix, self._suffix = spec.template(tokenizer)

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def adapter_version(self) -> str | None:
        return self.spec.adapter_version

    @property
    def routing(self) -> RoutingPolicy:
        return self.spec.routing

    @property
    def temperature(self) -> float:
        """The softmax temperature fitted on held-out data (an adapter's manifest records it)."""
        return self.spec.temperature

    @property
    def preferred_batch(self) -> int:
        """Questions per `classify` call that use this engine well: one full forward pass."""
        return self.batch_size

    def with_temperature(self, temperature: float) -> Engine:
        """The same engine (sharing its scorer) at another softmax temperature: calibration makes one."""
        calibrated = copy.copy(self)
        calibrated.spec = replace(self.spec, temperature=temperature)
        return calibrated

    @property
    def prompt_overhead(self) -> int:
        """Tokens every prompt spends on the template around the question."""
        return len(self._prefix) + len(self._suffix)

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Prompt token ids: prefix + question (truncated to the budget) + suffix, tokenized in one call."""
        # The Rust tokenizer directly: transformers' per-encoding Python conversion costs more than the tokenization
        # itself (docs/engine.md).
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        prompts = [" " + clean_question(text) for text in texts]
        if backend is not None:
            questions = [encoding.ids for encoding in backend.encode_batch(prompts, add_special_tokens=False)]
        else:
            questions = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        budget = self.max_question_tokens
        return Encoded(
            ids=[self._prefix + q[:budget] + self._suffix for q in questions],
            truncated=[len(q) > budget for q in questions],
        )

    def chunks(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped into forward passes: similar lengths together, at most `batch_size` rows and about
        `batch_tokens` tokens each (padded tokens, where the scorer pads), so a micro-batch with a few long questions
        wastes little on padding."""
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        groups: list[list[int]] = []
        tokens = 0  # the last group's real tokens
        for index in order:
            length = lengths[index]
            group = groups[-1] if groups else []
            cost = (len(group) + 1) * length if self.scorer.pads else tokens + length
            if not group or len(group) >= self.batch_size or cost > self.batch_tokens:
                groups.append([index])
                tokens = length
            else:
                group.append(index)
                tokens += length
        return groups

    def logits(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Label logits (float32) for encoded prompts, in input order; a scorer whose adapter has open-set statistics
        adds the distance as one more column (`predictions` reads it)."""
        out: np.ndarray | None = None
        for chunk in self.chunks([len(row) for row in ids]):
            scores = self.scorer([ids[index] for index in chunk])
            if out is None:
                out = np.empty((len(ids), scores.shape[1]), dtype=np.float32)
            out[chunk] = scores
        return out if out is not None else np.empty((0, len(self.taxonomy.labels)), dtype=np.float32)

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        if not texts:
            return []
        started = time.perf_counter()
        encoded = self.encode(texts)
        predictions = self.predictions(self.logits(encoded.ids), encoded.truncated)
        log.debug("classified", n=len(texts), ms=round(1000 * (time.perf_counter() - started), 1))
        return predictions

    def predictions(self, logits: np.ndarray, truncated: Sequence[bool]) -> list[Prediction]:
        """Logits (from `logits`) to labelled distributions at this engine's temperature; calibration fits the
        temperature on the same logits it then turns into predictions, without a second forward pass."""
        labels = len(self.taxonomy.labels)
        distances = logits[:, labels].tolist() if logits.shape[1] > labels else [None] * len(logits)
        bad = np.flatnonzero(~np.isfinite(logits).all(axis=1)).tolist()  # the distance's column too
        logits = logits[:, :labels]
        if bad:
            raise InferenceError(
                f"non-finite logits for {len(bad)} of {len(logits)} questions (first at index {bad[0]}); "
                f"try --dtype float32",
                bad_indices=tuple(bad),
            )
        scaled = logits / self.spec.temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        probabilities = np.exp(scaled)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        names = self.taxonomy.names
        predictions = []
        for row, cut, distance in zip(probabilities.tolist(), truncated, distances, strict=True):
            best = max(range(len(row)), key=row.__getitem__)
            predictions.append(Prediction(names[best], row[best], dict(zip(names, row, strict=True)), cut, distance))
        return predictions
