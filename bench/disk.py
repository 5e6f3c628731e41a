"""A reliability scenario: the corrections store's disk is full. Part of `python bench/reliability.py`; CI runs it
through tests/integration/test_reliability.py.

Once the worker is ready, its file-size limit drops to zero (RLIMIT_FSIZE through prlimit: every write that would
grow a file fails, as on a full volume, while reads work as they do there); corrections arrive; then the "disk" is
freed (the limit lifted). /dev/full, tried first, fails writes the same way but reads back endless zeros, which no
full disk does. Wanted: the worker survives and
retries, readiness fails while corrections cannot be stored (`storing_corrections`) and a metric counts the failures,
and once there is room every correction is stored, none twice, with no torn line.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any

from bench.refusals import metric, readiness
from qcat.worker.broker import EmbeddedBroker
from tests.integration.kafka import WorkerProcess, produce, unique


def full_disk(tmp: Path, *, corrections: int) -> dict[str, Any]:
    prefix = unique("r-disk")
    store = tmp / f"corrections-{prefix}"
    with EmbeddedBroker() as broker:
        process = WorkerProcess(broker.address, prefix, tmp, corrections_dir=store).start()
        assert process.process is not None
        pid = process.process.pid
        room = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        try:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, room[1]))  # full
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
            resource.prlimit(pid, resource.RLIMIT_FSIZE, room)  # room again
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
        "failed_check_while_full": sorted(name for name, ok in checks.items() if ok is False and name != "ready"),
        "worker_alive_while_full": alive_while_full,
        "stored": len({row["correction_id"] for row in parsed}),
        "stored_lines": len(lines),
        "stored_after_room_s": round(stored_after_s, 1),
        "ready_status_after": ready_again,
        "file_modes": sorted({oct(os.stat(path).st_mode & 0o777) for path in store.glob("*.jsonl")}),
    }
