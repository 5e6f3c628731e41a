"""The classifier engine: questions in, labels out, one forward pass per micro-batch.

Questions are tokenized once, truncated to a token budget, sorted by length and cut into batches that are
right-padded only to their own longest row, so little compute goes to padding. Each batch is one decoder
forward pass; only the label head's logits are computed. The label is always a taxonomy label; a row whose
logits are not finite raises `InferenceError` instead of producing one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog
import torch

from qcat.adapter import AdapterManifest, load_adapter
from qcat.errors import InferenceError
from qcat.model import (
    LoadedModel,
    attach_label_head,
    label_logits,
    load_configured_base,
    right_pad,
)
from qcat.schemas.prompt import PromptFormat, clean_question, prompt_format
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import EngineSettings

DEFAULT_TAXONOMY = Path(__file__).parent / "assets" / "trec6.json"
log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]
    truncated: bool

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda item: item[1], reverse=True)[:k]


@dataclass(frozen=True)
class Encoded:
    """Token ids of whole prompts, and whether each question was cut to the budget."""

    ids: list[list[int]]
    truncated: list[bool]


def default_batch_tokens(device: torch.device) -> int:
    """Padded tokens per forward pass: a CPU is as efficient at a few hundred tokens as at thousands, and padding
    is pure waste there; a GPU needs tens of thousands to fill its matrix units."""
    return 32768 if device.type == "cuda" else 256


class Engine:
    """A loaded classifier. Build it with `Engine.load(settings)`; `classify` is safe to call from one thread."""

    def __init__(
        self,
        base: LoadedModel,
        taxonomy: Taxonomy,
        prompt: PromptFormat,
        *,
        max_question_tokens: int,
        batch_size: int,
        batch_tokens: int | None = None,
        temperature: float = 1.0,
        manifest: AdapterManifest | None = None,
        compile: bool = False,
    ) -> None:
        self.base = base
        self.taxonomy = taxonomy
        self.prompt = prompt
        self.max_question_tokens = max_question_tokens
        self.batch_size = batch_size
        self.device = next(base.lm.parameters()).device
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device)
        self.temperature = temperature
        self.manifest = manifest
        # dynamic=True: one compiled graph serves every batch shape instead of one per (rows, width).
        self._forward = torch.compile(label_logits, dynamic=True) if compile else label_logits
        tokenizer = base.tokenizer
        self._prefix = tokenizer(prompt.prefix, add_special_tokens=False)["input_ids"]
        self._suffix = tokenizer(prompt.suffix, add_special_tokens=False)["input_ids"]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad or 0)

    @classmethod
    def load(cls, settings: EngineSettings, base: LoadedModel | None = None) -> Engine:
        """The engine `settings` describe; `base`, if given, is that base model already loaded (and modified here)."""
        base = base if base is not None else load_configured_base(settings)
        taxonomy = Taxonomy.from_file(settings.taxonomy) if settings.taxonomy else None
        if settings.adapter is not None:
            manifest = load_adapter(base, settings.adapter, taxonomy)
            log.info(
                "adapter loaded", adapter=manifest.version, base_model=base.name, labels=len(manifest.taxonomy.labels)
            )
            return cls(
                base,
                manifest.taxonomy,
                prompt_format(manifest.taxonomy, manifest.prompt_style),
                max_question_tokens=manifest.max_question_tokens,
                batch_size=settings.batch_size,
                batch_tokens=settings.batch_tokens,
                compile=settings.compile,
                temperature=manifest.temperature,
                manifest=manifest,
            )
        taxonomy = taxonomy or Taxonomy.from_file(DEFAULT_TAXONOMY)
        attach_label_head(base, taxonomy)
        log.info(
            "zero-shot: no adapter, the base model ranks the labels", base_model=base.name, labels=len(taxonomy.labels)
        )
        return cls(
            base,
            taxonomy,
            prompt_format(taxonomy, "instruct"),
            max_question_tokens=settings.max_question_tokens,
            batch_size=settings.batch_size,
            batch_tokens=settings.batch_tokens,
            compile=settings.compile,
        )

    @property
    def model_name(self) -> str:
        return self.base.name

    @property
    def adapter_version(self) -> str | None:
        return self.manifest.version if self.manifest else None

    @property
    def prompt_overhead(self) -> int:
        """Tokens every prompt spends on the template around the question."""
        return len(self._prefix) + len(self._suffix)

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Prompt token ids: prefix + question (truncated to the budget) + suffix, tokenized in one call."""
        # The Rust tokenizer directly: transformers' per-encoding Python conversion costs 3x the tokenization.
        backend = getattr(self.base.tokenizer, "backend_tokenizer", None)
        prompts = [" " + clean_question(text) for text in texts]
        if backend is not None:
            questions = [encoding.ids for encoding in backend.encode_batch(prompts, add_special_tokens=False)]
        else:
            questions = self.base.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        budget = self.max_question_tokens
        return Encoded(
            ids=[self._prefix + q[:budget] + self._suffix for q in questions],
            truncated=[len(q) > budget for q in questions],
        )

    def chunks(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped into forward passes: similar lengths together, at most `batch_size` rows and about
        `batch_tokens` padded tokens each, so a micro-batch with a few long questions wastes little on padding."""
        order = sorted(range(len(lengths)), key=lengths.__getitem__)
        groups: list[list[int]] = []
        for index in order:
            group = groups[-1] if groups else None
            if group is None or len(group) >= self.batch_size or (len(group) + 1) * lengths[index] > self.batch_tokens:
                groups.append([index])
            else:
                group.append(index)
        return groups

    @torch.inference_mode()
    def logits(self, ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """Label logits (float32, on CPU) for encoded prompts, in input order."""
        out = torch.empty(len(ids), len(self.taxonomy.labels), dtype=torch.float32)
        for chunk in self.chunks([len(row) for row in ids]):
            batch, last = right_pad([ids[index] for index in chunk], self.pad_id)
            result = self._forward(self.base.lm, batch.to(self.device), last.to(self.device))
            out[torch.tensor(chunk)] = result.cpu()
        return out

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        if not texts:
            return []
        started = time.perf_counter()
        encoded = self.encode(texts)
        logits = self.logits(encoded.ids)
        bad = (~torch.isfinite(logits).all(dim=1)).nonzero().flatten().tolist()
        if bad:
            raise InferenceError(
                f"non-finite logits for {len(bad)} of {len(texts)} questions (first at index {bad[0]}); "
                f"try --dtype float32",
                bad_indices=tuple(bad),
            )
        probabilities = torch.softmax(logits / self.temperature, dim=1)
        names = self.taxonomy.names
        predictions = []
        for row, truncated in zip(probabilities.tolist(), encoded.truncated, strict=True):
            best = max(range(len(row)), key=row.__getitem__)
            predictions.append(Prediction(names[best], row[best], dict(zip(names, row, strict=True)), truncated))
        log.debug("classified", n=len(texts), ms=round(1000 * (time.perf_counter() - started), 1))
        return predictions
