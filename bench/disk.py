"""A reliability scenario: the corrections store's disk is full. Part of `python bench/reliability.py`; CI runs it
through tests/integration/test_reliability.py.

The store's files are made to point at /dev/full (every write fails with ENOSPC, as on a full volume) before the
worker starts; corrections arrive; then the "disk" is freed (the links removed). Wanted: the worker survives and
retries, readiness fails while corrections cannot be stored (`storing_corrections`) and a metric counts the failures,
and once there is room every correction is stored, none twice, with no torn line.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bench.refusals import metric, readiness
from qcat.worker.broker import EmbeddedBroker
from tests.integration.kafka import WorkerProcess, produce, unique


def full_disk(tmp: Path, *, corrections: int) -> dict[str, Any]:
    prefix = unique("r-disk")
    store = tmp / f"corrections-{prefix}"
    store.mkdir(parents=True, mode=0o700)
    links = [store / f"corrections-{prefix}.corrections-{partition}.jsonl" for partition in range(2)]
    for link in links:
        link.symlink_to("/dev/full")
    with EmbeddedBroker() as broker:
        process = WorkerProcess(broker.address, prefix, tmp, corrections_dir=store).start()
        try:
            rows = [
                json.dumps({"correction_id": f"c{i}", "event_id": f"e{i}", "text": f"Who is {i} ?", "label": "HUM",
                            "source": "reviewer"}).encode()
                for i in range(corrections)
            ]  # fmt: skip
            produce(
                broker.address, f"{prefix}.corrections", [(f"e{i}".encode(), row, []) for i, row in enumerate(rows)]
            )
            failures = process.wait_for_metric("qcat_corrections_store_failures_total", 1)
            status, checks = readiness(process)
            alive_while_full = process.process is not None and process.process.poll() is None
            for link in links:  # room again
                link.unlink()
            freed = time.monotonic()
            process.wait_for_metric("qcat_corrections_stored_total", corrections, timeout=120)
            stored_after_s = time.monotonic() - freed
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and readiness(process)[0] != 200:
                time.sleep(0.2)
            ready_again = readiness(process)[0]
            lines = [line for path in store.glob("*.jsonl") for line in path.read_text().splitlines() if line.strip()]
            parsed = [json.loads(line) for line in lines]
            failures = metric(process, "qcat_corrections_store_failures_total")
        finally:
            process.stop()
    return {
        "corrections": corrections,
        "store_failures": failures,
        "ready_status_while_full": status,
        "failed_check_while_full": sorted(name for name, ok in checks.items() if ok is False),
        "worker_alive_while_full": alive_while_full,
        "stored": len({row["correction_id"] for row in parsed}),
        "stored_lines": len(lines),
        "stored_after_room_s": round(stored_after_s, 1),
        "ready_status_after": ready_again,
        "file_modes": sorted({oct(os.stat(path).st_mode & 0o777) for path in store.glob("*.jsonl")}),
    }
