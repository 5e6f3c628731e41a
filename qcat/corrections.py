"""The corrections store: validated `CorrectionEvent`s as JSON Lines under one directory, durable and idempotent.

Each writer appends to its own file (`corrections-<writer>.jsonl`; the worker uses one per input partition, which
one consumer owns at a time), so replicas never interleave writes. An append is flushed and fsynced before the
input offset may commit; a redelivered correction (same `correction_id`, same event and label) is not written twice,
and a reused `correction_id` with another event or label is handed back as a conflict (the worker dead-letters it).
Readers take the latest correction per `event_id` (by `corrected_at`) across all files. The files hold question
text: 0600 in a 0700 directory. JSON Lines: `qcat train`, pandas and jq read it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from qcat.schemas.events import CorrectionEvent

PATTERN = "corrections-*.jsonl"


class CorrectionStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._seen: dict[str, tuple[str, str]] | None = None  # correction_id -> (event_id, label)

    def _files(self) -> list[Path]:
        return sorted(self.root.glob(PATTERN)) if self.root.is_dir() else []

    def _events(self) -> Iterator[CorrectionEvent]:
        for path in self._files():
            with path.open(encoding="utf-8") as lines:
                for line in lines:
                    if line.strip():  # a torn last line (crash mid-write) is rewritten on redelivery
                        try:
                            yield CorrectionEvent.model_validate_json(line)
                        except ValueError:
                            continue

    def append(self, corrections: Iterable[CorrectionEvent], *, writer: str) -> tuple[int, list[CorrectionEvent]]:
        """Store the corrections not stored before; return how many were new, and the conflicts (see the module)."""
        if self._seen is None:
            self._seen = {event.correction_id: (event.event_id, event.label) for event in self._events()}
        new: list[CorrectionEvent] = []
        conflicts: list[CorrectionEvent] = []
        batch: dict[str, tuple[str, str]] = {}  # redeliveries may repeat within one batch too
        for event in corrections:
            content = (event.event_id, event.label)
            known = self._seen.get(event.correction_id) or batch.get(event.correction_id)
            if known is None:
                batch[event.correction_id] = content
                new.append(event)
            elif known != content:
                conflicts.append(event)
        if new:
            self._write(new, writer)
            self._seen |= batch
        return len(new), conflicts

    def _write(self, corrections: list[CorrectionEvent], writer: str) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.root / f"corrections-{re.sub(r'[^A-Za-z0-9._-]', '_', writer)}.jsonl"
        torn = _ends_torn(path)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a", encoding="utf-8") as out:
            if torn:  # end the torn line so the next record starts on its own
                out.write("\n")
            out.write("".join(event.model_dump_json() + "\n" for event in corrections))
            out.flush()
            os.fsync(out.fileno())

    def latest(self) -> list[CorrectionEvent]:
        """One correction per event_id: the most recent."""
        latest: dict[str, CorrectionEvent] = {}
        for event in self._events():
            known = latest.get(event.event_id)
            if known is None or event.corrected_at >= known.corrected_at:
                latest[event.event_id] = event
        return sorted(latest.values(), key=lambda event: event.corrected_at)


def _ends_torn(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    with path.open("rb") as data:
        data.seek(-1, os.SEEK_END)
        return data.read(1) != b"\n"
