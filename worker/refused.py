"""Records the broker refuses for good, kept on local disk so that the stream goes on and nothing is lost.

An output the broker refuses (too large, a topic's schema or policy, no authorization) is replaced by the input's
dead letter (worker/publisher.py). A dead letter the broker refuses too has nowhere left in Kafka: it is appended
here, one JSON line per record, to a file of this process's own (replicas may share the volume), and fsynced before
the input's offset may commit. The files hold question text, so they are created 0600 in a 0700 directory. Each
line names its topic, so `jq` and `qcat send` can replay them once the cause is fixed (docs/reliability.md).
"""

from __future__ import annotations

import base64
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from qcat.worker.process import Output


def _text(data: bytes | None) -> dict[str, str | None]:
    if data is None:
        return {"data": None, "encoding": None}
    try:
        return {"data": data.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"data": base64.b64encode(data).decode("ascii"), "encoding": "base64"}


class RefusedRecords:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / f"refused-{socket.gethostname()}-{os.getpid()}.jsonl"

    def write(self, output: Output, error: str) -> None:
        """Append `output` with why the broker refused it; durable when this returns."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = {
            "at": datetime.now(UTC).isoformat(),
            "topic": output.topic,
            "error": error,
            "key": _text(output.key),
            "value": _text(output.value),
            "headers": [[name, _text(value)] for name, value in output.headers],
        }
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(descriptor, "a", encoding="utf-8") as out:
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
