"""Where do non-finite logits come from? Batched forwards of a model over real texts, padded and masked the usual
ways (left / right padding with an attention mask, sdpa / eager attention, bf16 / fp16), against qcat's path
(right padding, causal attention, no mask: `label_logits`). Counts batches and rows whose hidden state at a real
token is non-finite and the largest activation per layer (bf16 reaches 3.4e38, fp16 only 65,504).

    python bench/nonfinite.py BASE_MODEL DATASET.jsonl [--device cuda] [--batches 20]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qcat.pytorch.model import model_source, right_pad  # noqa: E402


def forward(lm: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[float]]:
    """Last hidden state and each decoder layer's largest absolute output."""
    peaks: list[float] = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: peaks.append(float(out[0].abs().nan_to_num(0.0).max())))
        for layer in lm.model.layers
    ]
    try:
        with torch.no_grad():
            hidden: torch.Tensor = lm.model(**batch, use_cache=False).last_hidden_state
    finally:
        for hook in hooks:
            hook.remove()
    return hidden, peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base_model")
    parser.add_argument("data", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    texts = [json.loads(line)["text"] for line in args.data.open()][: args.batches * args.batch_size]
    batches = [texts[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
    source, options = model_source(args.base_model)
    tokenizer = AutoTokenizer.from_pretrained(source, **options)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    lm = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16, **options).to(args.device).eval()
    results = []
    for dtype in (torch.bfloat16, torch.float16):
        lm.to(dtype)
        for attention in ("sdpa", "eager"):
            lm.set_attn_implementation(attention)
            for padding in ("left", "right", "qcat"):
                bad_batches = bad_rows = 0
                peak = 0.0
                for batch_texts in batches:
                    if padding == "qcat":
                        ids = [tokenizer(t, truncation=True, max_length=64)["input_ids"] for t in batch_texts]
                        input_ids, last = right_pad(ids, tokenizer.pad_token_id)
                        hidden, peaks = forward(lm, {"input_ids": input_ids.to(args.device)})
                        real = torch.arange(hidden.shape[1])[None, :] <= last[:, None]
                    else:
                        tokenizer.padding_side = padding
                        encoded = tokenizer(
                            batch_texts, padding=True, truncation=True, max_length=64, return_tensors="pt"
                        ).to(args.device)
                        hidden, peaks = forward(lm, dict(encoded))
                        real = encoded["attention_mask"].bool().cpu()
                    finite = torch.isfinite(hidden).all(dim=-1).cpu()
                    rows = int((~finite & real).any(dim=1).sum())
                    bad_rows += rows
                    bad_batches += rows > 0
                    peak = max(peak, *peaks)
                row = {
                    "dtype": str(dtype).removeprefix("torch."),
                    "attention": attention,
                    "padding": padding,
                    "batches": len(batches),
                    "batches_with_non_finite": bad_batches,
                    "rows_with_non_finite": bad_rows,
                    "largest_layer_activation": peak,
                }
                results.append(row)
                print(json.dumps(row), flush=True)
    out = args.out or ROOT / "bench" / "results" / "nonfinite.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/nonfinite.py " + " ".join(sys.argv[1:])
    report = {"command": command, "device": args.device, "results": results}
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
