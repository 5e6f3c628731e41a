"""Engine benchmark: the seed recipe's per-message generate() vs qcat's one-pass batched engine, side by side.

Runs on a random-weight model of Qwen3-0.6B's exact shape (speed does not depend on weight values) over real
questions (TREC test set). Prints a table and, last, `speedup_vs_naive=X mfu=Y`; writes bench/results/.

    python bench/engine.py [--quick] [--device cuda] [--batch-sizes 1,8,32,64] [--quantize int8]

`--quantize int8|fp8` also times the engine at that serving precision (qcat/pytorch/quantize.py, what QCAT_QUANTIZE
does: int8 on CPUs, fp8 on Hopper GPUs; the label head stays float32), alternating with the unquantized engine at the
best batch size, and ends with `speedup_vs_naive=X int8_vs_bf16=Y` (X for the quantized engine). `int8-torchao`, an
experiment not shipped, is torchao's Int8DynamicActivationInt8Weight. Each runs the way the best unquantized variant
ran (eager or compiled).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from typing import Any, cast

import torch
from transformers import PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qcat.engine import Engine, EngineSpec  # noqa: E402
from qcat.logs import configure_logging  # noqa: E402
from qcat.pytorch.engine import TorchScorer, build_engine  # noqa: E402
from qcat.pytorch.model import HEAD, LoadedModel, attach_label_head, fingerprint  # noqa: E402
from qcat.pytorch.open_set import OpenSetHead, OpenSetStats  # noqa: E402
from qcat.pytorch.quantize import quantize_decoder  # noqa: E402
from qcat.pytorch.tiny import fit_tokenizer  # noqa: E402
from qcat.schemas.prompt import PromptStyle, prompt_format, verbalize  # noqa: E402
from qcat.schemas.taxonomy import Taxonomy  # noqa: E402
from qcat.settings import EngineSettings, Quantize  # noqa: E402

TAXONOMY = Taxonomy.model_validate_json((ROOT / "qcat" / "assets" / "trec6.json").read_text(), strict=False)


def qwen3_06b_config(vocab_size: int = 151936) -> Qwen3Config:
    """Qwen3-0.6B's published shape."""
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
        max_position_embeddings=40960,
    )


def build_model(device: torch.device, dtype: torch.dtype) -> tuple[Qwen3ForCausalLM, PreTrainedTokenizerBase]:
    """Random weights of the real shape; a byte-level BPE fitted on TREC train stands in for Qwen's tokenizer."""
    texts = [json.loads(line)["text"] for line in (ROOT / "data" / "trec" / "train.jsonl").open()]
    tokenizer = fit_tokenizer(texts, vocab_size=8192)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(qwen3_06b_config())
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = None  # random weights: always generate the full label length
    return model.eval(), tokenizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_ceiling(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """Dense matmul FLOP/s in this dtype, this run: the roof the engine's achieved FLOP/s is compared to."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def forward_flops(config: Qwen3Config, lengths: list[int], labels: int) -> float:
    """Useful FLOPs of one decoder pass over sequences of these lengths (padding not counted), head included."""
    h, layers = config.hidden_size, config.num_hidden_layers
    attn = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    per_token = layers * 2 * (h * attn + 2 * h * kv + attn * h + 3 * h * config.intermediate_size)
    causal_attention = sum(layers * 2 * attn * length * length for length in lengths)  # QK^T + AV, causal half
    return per_token * sum(lengths) + causal_attention + 2 * h * labels * len(lengths)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    started = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - started


def run_naive(model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerBase, questions: list[str]) -> dict[str, Any]:
    """The seed recipe: per message, generate() the label with the category-listing prompt, greedy."""
    device = model.device
    prompt = prompt_format(TAXONOMY, "instruct")
    new_tokens = max(len(tokenizer(verbalize(n), add_special_tokens=False)["input_ids"]) for n in TAXONOMY.names)
    encoded = [tokenizer(prompt.render(q), return_tensors="pt").to(device) for q in questions]

    def one(inputs: Any) -> None:
        with torch.inference_mode():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    one(encoded[0])  # warm-up
    latencies = [timed(lambda inputs=inputs: one(inputs), device) for inputs in encoded]
    return {
        "questions": len(questions),
        "new_tokens": new_tokens,
        "mean_prompt_tokens": statistics.fmean(int(e["input_ids"].shape[1]) for e in encoded),
        "questions_per_s": len(questions) / sum(latencies),
        "p50_ms": 1000 * statistics.median(latencies),
    }


def run_engine(engine: Engine, questions: list[str], batch_size: int, ceiling: float) -> dict[str, Any]:
    """qcat's engine at one micro-batch size: the questions arrive in micro-batches of that size, as in the worker."""
    scorer = cast(TorchScorer, engine.scorer)
    device = scorer.device
    batches = [questions[i : i + batch_size] for i in range(0, len(questions), batch_size)]
    engine.batch_size = batch_size
    warmup = timed(lambda: engine.classify(batches[0]), device)  # includes torch.compile's compilation
    latencies = [timed(lambda batch=batch: engine.classify(batch), device) for batch in batches]
    encoded = [engine.encode(batch).ids for batch in batches]
    forward_only = sum(timed(lambda ids=ids: engine.logits(ids), device) for ids in encoded)
    lengths = [len(ids) for batch in encoded for ids in batch]
    flops = forward_flops(scorer.base.lm.config, lengths, len(engine.taxonomy.labels))
    total = sum(latencies)
    ordered = sorted(latencies)
    return {
        "batch_size": batch_size,
        "questions": len(questions),
        "mean_prompt_tokens": statistics.fmean(lengths),
        "questions_per_s": len(questions) / total,
        "p50_batch_ms": 1000 * statistics.median(latencies),
        "p99_batch_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "achieved_flop_s": flops / total,
        "mfu": flops / total / ceiling,
        "forward_only_mfu": flops / forward_only / ceiling,
        "warmup_s": warmup,
    }


def make_engine(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    style: PromptStyle,
    batch_tokens: int | None,
    *,
    compile: bool | None = False,
    cuda_graphs: bool | None = False,
    packed: bool | None = False,
    batch_size: int = 64,
    open_set: bool = False,
) -> Engine:
    base = LoadedModel(model, tokenizer, "random-qwen3-0.6b-shape", fingerprint(model), offline_builtin=True)
    head = attach_label_head(base, TAXONOMY)
    if open_set:  # the label head plus the open-set distance (random statistics: speed does not depend on them)
        generator = torch.Generator().manual_seed(0)
        hidden = head.weight.shape[1]
        means = torch.randn(len(TAXONOMY.labels), hidden, generator=generator)
        stats = OpenSetStats(means, torch.randn(hidden, hidden, generator=generator) / hidden**0.5)
        setattr(base.lm, HEAD, OpenSetHead(head, stats))
    return build_engine(
        base,
        EngineSpec(TAXONOMY, prompt_format(TAXONOMY, style), 64),
        EngineSettings(
            batch_size=batch_size, batch_tokens=batch_tokens, compile=compile, cuda_graphs=cuda_graphs, packed=packed
        ),
    )


VARIANTS: dict[str, dict[str, bool]] = {
    "eager": {"packed": False},
    "compiled": {"packed": False, "compile": True},
    "graphs": {"packed": False, "cuda_graphs": True},
    "packed": {"packed": True, "compile": False, "cuda_graphs": False},
    "packed-graphs": {"packed": True, "compile": False, "cuda_graphs": True},
    "packed-compiled": {"packed": True, "compile": True, "cuda_graphs": False},
    "packed-compiled-graphs": {"packed": True, "compile": True, "cuda_graphs": True},
    "packed-compiled-graphs-open-set": {"packed": True, "compile": True, "cuda_graphs": True, "open_set": True},
    "eager-open-set": {"packed": False, "open_set": True},
}
"""The engine's ways to run a pass (QCAT_COMPILE, QCAT_CUDA_GRAPHS, QCAT_PACKED), by name; `-open-set`: with the
open-set distance in the head, as an adapter trained by default serves."""


def agreement(engine: Engine, reference: Engine, questions: list[str]) -> float:
    """The largest difference between two engines' label logits on the same questions."""
    ids, labels = engine.encode(questions).ids, len(engine.taxonomy.labels)
    return float(abs(engine.logits(ids)[:, :labels] - reference.logits(ids)[:, :labels]).max())


def machine(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        if cpuinfo.exists():
            names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
            info["cpu"] = names[0] if names else info["cpu"]
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer questions: under a minute on 2 CPU cores")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    parser.add_argument("--batch-sizes", default=None, help="default: 1,8,32,64 (cuda: 1,8,64,256,1024,2048)")
    parser.add_argument("--compile", action="store_true", help="also measure the engine under torch.compile")
    parser.add_argument(
        "--variants", default=None, help=f"of {', '.join(VARIANTS)} (default: eager, and compiled with --compile)"
    )
    parser.add_argument("--questions", type=int, default=None, help="engine questions (default: 500, quick: 128)")
    parser.add_argument("--naive-questions", type=int, default=None, help="default: 24, quick: 6")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per forward (default: engine's)")
    parser.add_argument("--quantize", choices=["int8", "fp8", "int8-torchao"], default=None)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds for --quantize")
    parser.add_argument(
        "--quantized-only", action="store_true", help="with --quantize: only that comparison, at the largest batch size"
    )
    args = parser.parse_args()
    configure_logging(json=False, level="WARNING")

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = [json.loads(line) for line in (ROOT / "data" / "trec" / "test.jsonl").open()]
    questions = [row["text"] for row in rows]
    default_sizes = "1,8,64,256,1024,2048" if device.type == "cuda" else "1,8,32,64"
    batch_sizes = [int(b) for b in (args.batch_sizes or default_sizes).split(",")]
    n_engine = args.questions or (128 if args.quick else len(questions))
    questions = questions * (1 + 8 * max(batch_sizes) // len(questions))  # cycled, so large batches see 8 batches

    def sample(batch_size: int) -> list[str]:
        """At least n_engine questions and 8 batches per size, at most 256 batches (batch 1 on a GPU)."""
        return questions[: min(max(n_engine, 8 * batch_size), 256 * batch_size)]

    n_naive = args.naive_questions or (6 if args.quick else 24)

    started = time.perf_counter()
    model, tokenizer = build_model(device, dtype)
    print(f"built Qwen3-0.6B-shaped model on {device} ({dtype}) in {time.perf_counter() - started:.1f}s", flush=True)
    ceiling = matmul_ceiling(
        device, dtype, n=8192 if device.type == "cuda" else 2048, repeats=20 if device.type == "cuda" else 5
    )
    print(f"dense matmul ceiling: {ceiling / 1e9:.1f} GFLOP/s", flush=True)

    naive = run_naive(model, tokenizer, questions[:n_naive])
    print(f"naive generate() batch 1: {naive['questions_per_s']:.2f} q/s", flush=True)
    if args.quantized_only:  # at the largest --batch-sizes, compiled with --compile: no sweep first
        variant, batch = "compiled" if args.compile else "eager", batch_sizes[-1]
        quantized = compare_quantized(model, tokenizer, args, sample(batch), batch, variant, naive)
        report = {"command": "python bench/engine.py " + " ".join(sys.argv[1:]), "machine": machine(device)}
        out = args.out or ROOT / "bench" / "results" / f"engine-{device.type}-{args.quantize}.json"
        out.write_text(json.dumps(report | {"naive_generate_batch1": naive, "quantized": quantized}, indent=2) + "\n")
        ratio, speedup = quantized["ratio"], quantized["speedup_vs_naive"]
        print(f"speedup_vs_naive={speedup:.1f} {args.quantize}_vs_{args.dtype}={ratio:.2f}")
        return
    results: dict[str, list[dict[str, Any]]] = {}
    variants = args.variants.split(",") if args.variants else ["eager", "compiled"] if args.compile else ["eager"]
    reference = make_engine(model, tokenizer, "compact", args.batch_tokens, batch_size=batch_sizes[-1])
    differences = {}
    for variant in variants:
        engine = make_engine(model, tokenizer, "compact", args.batch_tokens, **VARIANTS[variant])
        results[variant] = []
        for batch_size in batch_sizes:
            result = run_engine(engine, sample(batch_size), batch_size, ceiling)
            results[variant].append(result)
            print(
                f"engine {variant:8} batch {batch_size:>4}: {result['questions_per_s']:8.1f} q/s"
                f"  p50 {result['p50_batch_ms']:8.1f} ms  p99 {result['p99_batch_ms']:8.1f} ms"
                f"  mfu {result['mfu']:.1%} (forward only {result['forward_only_mfu']:.1%})",
                flush=True,
            )
        differences[variant] = agreement(engine, reference, sample(batch_sizes[-1])[: batch_sizes[-1]])
        print(f"engine {variant}: largest logit difference from eager {differences[variant]:.2e}", flush=True)
    best_variant, best = max(
        ((variant, row) for variant, rows in results.items() for row in rows),
        key=lambda item: item[1]["questions_per_s"],
    )
    instruct_engine = make_engine(model, tokenizer, "instruct", args.batch_tokens, **VARIANTS[best_variant])
    instruct = run_engine(instruct_engine, sample(best["batch_size"]), best["batch_size"], ceiling)
    print(f"engine, zero-shot instruct prompt, batch {best['batch_size']}: {instruct['questions_per_s']:.1f} q/s")

    fixed: dict[str, Any] | None = None
    if device.type == "cuda":  # the GPU target is stated for 32-token prompts at large batch
        fixed_engine = make_engine(model, tokenizer, "compact", args.batch_tokens, **VARIANTS[best_variant])
        fixed_engine.max_question_tokens = 32 - fixed_engine.prompt_overhead
        words = " ".join(["word"] * 64)
        fixed = run_engine(fixed_engine, [words] * (best["batch_size"] * 8), best["batch_size"], ceiling)
        print(
            f"engine, 32-token prompts, batch {best['batch_size']}: mfu {fixed['mfu']:.1%}"
            f" (forward only {fixed['forward_only_mfu']:.1%})"
        )

    quantized = None
    if args.quantize:
        batch = best["batch_size"]
        quantized = compare_quantized(model, tokenizer, args, sample(batch), batch, best_variant, naive)

    speedup = best["questions_per_s"] / naive["questions_per_s"]
    name = "engine-cpu.json" if device.type == "cpu" else "engine-h200.json"
    out = args.out or ROOT / "bench" / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "command": "python bench/engine.py " + " ".join(sys.argv[1:]),
        "machine": machine(device),
        "dtype": args.dtype,
        "model": "random weights, Qwen3-0.6B shape (596M parameters, tied embeddings)",
        "matmul_ceiling_flop_s": ceiling,
        "naive_generate_batch1": naive,
        "engine_compact_prompt": results,
        "best_variant": best_variant,
        "largest_logit_difference_from_eager": differences,
        "engine_instruct_prompt_best_batch": instruct,
        "engine_32_token_prompts": fixed,
        "speedup_vs_naive": speedup,
        "best_batch_size": best["batch_size"],
        "mfu_at_best": best["mfu"],
        "quantized": quantized,
        "seconds": time.perf_counter() - started,
    }
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    if quantized:
        ratio = quantized["ratio"]
        print(f"speedup_vs_naive={quantized['speedup_vs_naive']:.1f} {args.quantize}_vs_{args.dtype}={ratio:.2f}")
    else:
        print(f"speedup_vs_naive={speedup:.1f} mfu={(fixed or best)['mfu']:.3f}")


def quantized_copy(model: Qwen3ForCausalLM, kind: str) -> Qwen3ForCausalLM:
    """A copy whose decoder linear layers are quantized as `kind` says (weights, and activations per call);
    embeddings and the (later attached) label head are untouched."""
    copy = deepcopy(model)
    if kind == "int8-torchao":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        quantize_(copy.model, Int8DynamicActivationInt8WeightConfig())
    else:
        quantize_decoder(copy, cast(Quantize, kind))
    return copy


def compare_quantized(
    model: Qwen3ForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    args: argparse.Namespace,
    questions: list[str],
    batch_size: int,
    variant: str,
    naive: dict[str, Any],
) -> dict[str, Any]:
    """The engine at `--quantize` against the unquantized one, alternating, at `batch_size`, eager or compiled."""
    compiled = variant == "compiled"
    plain = make_engine(model, tokenizer, "compact", args.batch_tokens, compile=compiled, batch_size=batch_size)
    quantized_model = quantized_copy(model, args.quantize)
    candidate = make_engine(
        quantized_model, tokenizer, "compact", args.batch_tokens, compile=compiled, batch_size=batch_size
    )
    result = side_by_side(plain, candidate, questions, args.rounds)
    result |= {"kind": args.quantize, "batch_size": batch_size, "variant": variant}
    result["speedup_vs_naive"] = result["candidate_questions_per_s"] / naive["questions_per_s"]
    print(json.dumps(result), flush=True)
    return result


def side_by_side(baseline: Engine, candidate: Engine, questions: list[str], rounds: int) -> dict[str, Any]:
    """Questions/s of both engines over the same questions, alternating for `rounds` (this CPU's speed drifts), the
    median of the candidate's ratio to the baseline per round, and how far their answers differ."""
    for engine in (baseline, candidate):
        engine.classify(questions[: engine.batch_size])  # warm-up (and compilation)
    rates: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for engine, rate in zip((baseline, candidate), rates, strict=True):
            started = time.perf_counter()
            engine.classify(questions)
            rate.append(len(questions) / (time.perf_counter() - started))
    pairs = list(zip(baseline.classify(questions), candidate.classify(questions), strict=True))
    return {
        "questions_per_s_rounds": {"baseline": rates[0], "candidate": rates[1]},
        "ratio": statistics.median(b / a for a, b in zip(*rates, strict=True)),
        "candidate_questions_per_s": statistics.median(rates[1]),
        "same_label": sum(a.label == b.label for a, b in pairs) / len(pairs),
        "max_confidence_difference": max(abs(a.confidence - b.confidence) for a, b in pairs),
    }


if __name__ == "__main__":
    main()
