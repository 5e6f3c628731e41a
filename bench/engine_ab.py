"""A/B of the engine across two checkouts: run from each tree's root in turn (the CPU drifts: alternate, several
times), e.g. `git worktree add /tmp/old REV`, then `(cd /tmp/old && PYTHONPATH=/tmp/old python
/path/to/bench/engine_ab.py)` and `python bench/engine_ab.py`. Builds that tree's engine on Qwen3-0.6B's shape
(random weights), classifies 4 batches of 64 TREC questions after a warm-up, prints the median seconds a batch."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

root = Path.cwd()
sys.path.insert(0, str(root))
import bench.engine as be  # noqa: E402  # the tree's own bench, whatever its package names

torch.manual_seed(0)
model, tok = be.build_model(torch.device("cpu"), torch.bfloat16)
engine = be.make_engine(model, tok, "compact", None, batch_size=64)
questions = [json.loads(line)["text"] for line in (root / "data" / "trec" / "test.jsonl").open()][:320]
batches = [questions[i : i + 64] for i in range(0, 320, 64)]
engine.classify(batches[0])
times = []
for b in batches[1:]:
    started = time.perf_counter()
    engine.classify(b)
    times.append(time.perf_counter() - started)
print(json.dumps({"tree": str(root), "median_s": statistics.median(times), "times": times}))
