"""The promotion gate: a candidate and the current adapter scored on the same rows of one frozen gate set, and a
paired decision.

Why paired: two adapters scored on the same questions disagree on few of them, and only those carry evidence; an
accuracy difference of a point on a thousand questions can be noise or not depending on how many answers flipped.
The decision is non-inferiority: the candidate is refused only when the 95% interval of its accuracy difference
(bootstrap over the gate's rows) lies wholly below `-tolerance`. So a noise-level difference neither blocks a
candidate (the nightly retrain goes on) nor makes a worse one pass unnoticed: the summary keeps both accuracies, the
flips each way and McNemar's exact p-value. Torch-free: scores are recorded by whoever ran the models
(`qcat.training.gate`); the registry keeps them (`Registry.record_gate`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 4000


@dataclass(frozen=True)
class GateScores:
    """Which rows of a gate set (by the set's fingerprint) a version answered right, in the set's order."""

    version: str
    gate: str
    correct: tuple[bool, ...]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else 0.0

    def to_json(self) -> bytes:
        bits = "".join("1" if right else "0" for right in self.correct)
        return json.dumps(
            {"version": self.version, "gate": self.gate, "accuracy": self.accuracy, "correct": bits}
        ).encode()

    @classmethod
    def from_json(cls, content: bytes) -> GateScores:
        raw = json.loads(content)
        return cls(str(raw["version"]), str(raw["gate"]), tuple(bit == "1" for bit in raw["correct"]))


@dataclass(frozen=True)
class Verdict:
    """A paired comparison on one gate set; `promote` is the gate's answer."""

    promote: bool
    candidate: str
    current: str
    gate: str
    rows: int
    candidate_accuracy: float
    current_accuracy: float
    difference: float
    low: float
    high: float
    candidate_only: int
    """Rows the candidate answers right and the current adapter wrong."""
    current_only: int
    p_value: float
    tolerance: float

    @property
    def reason(self) -> str:
        figures = (
            f"on gate set {self.gate} ({self.rows} questions): {self.candidate_accuracy:.4f} against "
            f"{self.current_accuracy:.4f}, difference {self.difference:+.4f} (95% interval {self.low:+.4f} to "
            f"{self.high:+.4f}; {self.candidate_only} answers better, {self.current_only} worse; McNemar p "
            f"{self.p_value:.3f})"
        )
        if self.promote:
            return f"not worse beyond the tolerance {self.tolerance} {figures}"
        return f"worse beyond the tolerance {self.tolerance} {figures}"

    def as_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__} | {"reason": self.reason}


def paired_verdict(candidate: GateScores, current: GateScores, tolerance: float, *, seed: int = 0) -> Verdict:
    """Non-inferiority of `candidate` against `current` on the same gate rows (see the module)."""
    if candidate.gate != current.gate or len(candidate.correct) != len(current.correct):
        raise ValueError(f"scores from different gate sets: {candidate.gate} and {current.gate}")
    ours = np.array(candidate.correct, dtype=float)
    theirs = np.array(current.correct, dtype=float)
    rows = len(ours)
    differences = ours - theirs
    generator = np.random.default_rng(seed)
    resampled = differences[generator.integers(0, rows, size=(RESAMPLES, rows))].mean(axis=1) if rows else np.zeros(1)
    low, high = np.quantile(resampled, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    better, worse = int((differences > 0).sum()), int((differences < 0).sum())
    return Verdict(
        promote=bool(high >= -tolerance),
        candidate=candidate.version,
        current=current.version,
        gate=candidate.gate,
        rows=rows,
        candidate_accuracy=float(ours.mean()) if rows else 0.0,
        current_accuracy=float(theirs.mean()) if rows else 0.0,
        difference=float(differences.mean()) if rows else 0.0,
        low=float(low),
        high=float(high),
        candidate_only=better,
        current_only=worse,
        p_value=mcnemar(better, worse),
        tolerance=tolerance,
    )


def mcnemar(better: int, worse: int) -> float:
    """McNemar's exact two-sided p-value: the flips each way as a fair coin's heads and tails."""
    from scipy.stats import binomtest

    flips = better + worse
    return 1.0 if flips == 0 else float(binomtest(better, flips, 0.5).pvalue)


def gate_fingerprint(rows: list[tuple[str, str]]) -> str:
    """A gate set's identity: its (text, label) rows in order (scores are kept per row)."""
    digest = hashlib.sha256()
    for text, label in rows:
        digest.update(json.dumps([text, label]).encode())
    return digest.hexdigest()[:16]
