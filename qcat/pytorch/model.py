"""Loading a base model and giving it a label head: the one model runtime of training and serving.

A classifier here is a causal LM's decoder plus `label_head`, a linear layer with one row per taxonomy label,
applied to the hidden state of each prompt's last token. The LM's own vocabulary projection is never computed
(151,936 logits per token for Qwen3): only the labels' logits are. Zero-shot, the head's rows are the LM's
output rows for each label's words, so the head scores labels the way the LM would. Fine-tuning starts from
that head and trains it with LoRA on the decoder; peft saves the head with the adapter (`modules_to_save`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import structlog
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from qcat.errors import ModelLoadError, UsageError
from qcat.pytorch.cpu import configure_cpu
from qcat.pytorch.tiny import build_tiny_qwen3
from qcat.schemas.prompt import verbalize
from qcat.schemas.taxonomy import Taxonomy
from qcat.settings import TINY_NAME, EngineSettings

HEAD = "label_head"
log = structlog.get_logger(__name__)


@dataclass
class LoadedModel:
    """A loaded base model: the causal LM, its tokenizer, where it came from and a weight-derived fingerprint."""

    lm: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    fingerprint: str
    offline_builtin: bool


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise UsageError(f"--device / QCAT_DEVICE {device!r} is not a device: use auto, cpu, cuda or cuda:N") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device / QCAT_DEVICE is {device!r}, but this machine has no usable CUDA device: use cpu")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """bf16 by default: on CUDA and on CPUs with bf16 instructions it is faster than fp32 (docs/engine.md)."""
    if dtype != "auto":
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else torch.float32


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags for flag in ("avx512_bf16", "amx_bf16"))


def fingerprint(lm: PreTrainedModel) -> str:
    """Identify a base model by its shape and a sample of its weights, whatever its dtype, path or file format."""
    config = lm.config
    shape = {
        key: getattr(config, key, None)
        for key in (
            "model_type",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
            "vocab_size",
        )
    }
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode())
    embeddings = _weight(lm.get_input_embeddings())
    rows = embeddings[:: max(1, embeddings.shape[0] // 8)][:8, :64]
    digest.update(rows.detach().to("cpu", torch.bfloat16).float().numpy().tobytes())
    return digest.hexdigest()[:16]


def model_source(source: str) -> tuple[str, dict[str, str]]:
    """Where transformers loads `source` from: a hub id or directory as is; a .gguf file as its folder + gguf_file."""
    path = Path(source).expanduser()
    if path.suffix != ".gguf":
        return source, {}
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {source} does not exist.")
    return str(path.parent), {"gguf_file": path.name}


def through_qcat_logging() -> None:
    """transformers and huggingface_hub write their records with handlers of their own (the hub's retry warnings
    came out as plain text in the worker's JSON log): hand them to the root logger, which qcat's renderer serves."""
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    logging.getLogger("huggingface_hub").handlers.clear()
    hub_logging.enable_propagation()


def load_base_model(source: str, *, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Load from a hub id, a local directory, a `.gguf` file (transformers' gguf_file), or the built-in tiny model."""
    through_qcat_logging()
    if source == TINY_NAME:
        log.warning("using the built-in offline model: random weights, for tests and demos only", model=TINY_NAME)
        tiny, tiny_tokenizer = build_tiny_qwen3()
        tiny.to(device=device, dtype=dtype)  # type: ignore[call-arg]  # transformers' wrapper hides Module.to
        return LoadedModel(tiny, tiny_tokenizer, TINY_NAME, fingerprint(tiny), offline_builtin=True)
    location, extra = model_source(source)
    try:
        tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(location, **extra)
        lm: PreTrainedModel = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **extra)
    except Exception as error:
        raise ModelLoadError(
            f"Could not load the base model {source!r}: {error}. If this machine is offline, download it where the "
            f"hub is reachable (`hf download {source} --local-dir DIR`) and pass --base-model DIR (or a .gguf file); "
            f"for a quick offline try, use --base-model {TINY_NAME}."
        ) from error
    quantizer = getattr(lm, "hf_quantizer", None)
    if quantizer is not None and extra:
        quantizer.remove_quantization_config(lm)  # GGUF weights are dequantized on load; keep a plain model
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    lm.to(device)  # type: ignore[arg-type]  # transformers' wrapper hides Module.to
    lm.eval()
    return LoadedModel(lm, tokenizer, source, fingerprint(lm), offline_builtin=False)


def load_configured_base(settings: EngineSettings) -> LoadedModel:
    """The base model `settings` name, on their device and in their dtype (on a CPU, with its process-wide
    settings applied first: qcat/pytorch/cpu.py)."""
    device = resolve_device(settings.device)
    if device.type == "cpu":
        configure_cpu(settings.threads, settings.keep_freed_memory)
    return load_base_model(settings.base_model, device=device, dtype=resolve_dtype(settings.dtype, device))


def private_copy(base: LoadedModel) -> LoadedModel:
    """A copy to attach a head or merge an adapter into, without loading the weights again (seconds for a GGUF
    file or a hub download, versus a memory copy)."""
    return replace(base, lm=copy.deepcopy(base.lm))


def verbalizer_rows(base: LoadedModel, taxonomy: Taxonomy) -> torch.Tensor:
    """For each label, the mean of the LM output rows of its words: the zero-shot head."""
    output = base.lm.get_output_embeddings()
    if output is None:
        raise ModelLoadError(f"{base.name} has no language-model head to score labels with.")
    weight = _weight(output).detach()
    rows = []
    for name in taxonomy.names:
        ids = base.tokenizer(verbalize(name), add_special_tokens=False)["input_ids"]
        rows.append(weight[ids].float().mean(dim=0))
    return torch.stack(rows)


def attach_label_head(base: LoadedModel, taxonomy: Taxonomy) -> nn.Linear:
    """Give the LM a head over `taxonomy`, initialised zero-shot; adapters overwrite it with trained rows.

    The head stays float32 whatever the decoder's dtype: it is tiny (labels x hidden), and trained in bf16 its
    weights would lose many of Adam's small updates to rounding (peft keeps the LoRA weights in float32 for the
    same reason, but its copy of the head would keep the base dtype).
    """
    reference = _weight(base.lm.get_input_embeddings())
    head = nn.Linear(reference.shape[1], len(taxonomy.labels), bias=False)
    with torch.no_grad():
        head.weight.copy_(verbalizer_rows(base, taxonomy))
    head = head.to(device=reference.device, dtype=torch.float32)
    setattr(base.lm, HEAD, head)
    return head


def right_pad(
    rows: Sequence[Sequence[int]], pad_id: int, shape: tuple[int, int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows as one right-padded batch, plus each row's last real position (where `label_logits` reads).
    `shape` (rows, width), if given, pads further, with rows of padding only (their last position is 0)."""
    rows_out, width = shape or (len(rows), max(len(row) for row in rows))
    batch = np.full((rows_out, width), pad_id, dtype=np.int64)
    last = np.zeros(rows_out, dtype=np.int64)
    for index, row in enumerate(rows):
        batch[index, : len(row)] = row
        last[index] = len(row) - 1
    return torch.from_numpy(batch), torch.from_numpy(last)


def label_features(
    lm: nn.Module, input_ids: torch.Tensor, last_index: torch.Tensor, attention_mask: object = None
) -> torch.Tensor:
    """One forward pass of the decoder: each row's last real token's final hidden state, what the head reads.

    Rows are right-padded and attention is causal, so a real token never sees the padding after it: no
    attention mask is needed, and a question scores the same alone or in any batch. `attention_mask` is passed on
    to the decoder (`causal_masks`: said explicitly when a CUDA graph captures the pass).
    """
    decoder: nn.Module = lm.get_decoder()  # type: ignore[operator]
    output = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden: torch.Tensor = output.last_hidden_state
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last_index]


def label_logits(
    lm: nn.Module, input_ids: torch.Tensor, last_index: torch.Tensor, attention_mask: object = None
) -> torch.Tensor:
    """The label head over `label_features`: float32 logits (an `OpenSetHead` adds the open-set distance as one more
    column)."""
    return head_logits(lm, label_features(lm, input_ids, last_index, attention_mask))


def head_logits(lm: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The label head over features. It computes in float32 always: serving runs no autocast, and `qcat train
    --autocast` must not turn the head's product (and the logits that pick the best epoch) into bf16; the decoder's
    matmuls may be bf16."""
    head: nn.Module = getattr(lm, HEAD)
    with torch.autocast(features.device.type, enabled=False):
        logits: torch.Tensor = head(features.float()).float()
    return logits


def _weight(module: object) -> torch.Tensor:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ModelLoadError(f"expected a layer with a weight matrix, got {type(module).__name__}")
    return weight
