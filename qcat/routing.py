"""Where a classified question goes: its label's route, or review. An adapter carries its own routing policy (its
manifest's `routing`), chosen on held-out data when it was trained, so a hot swap changes the rules together with
the weights; `QCAT_CONFIDENCE_THRESHOLD` overrides the confidence threshold for every adapter. Torch-free: the
worker's routing reads it without a model.

Three rules send an answer to review, each with its reason: its question lies outside the taxonomy (its distance to
the nearest label's questions, in the adapter's feature space, passes the adapter's boundary: `outside`), its label is
the adapter's trained 'none of these' label (`none_of_these`), or its confidence is under the threshold
(`low_confidence`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_REVIEW_THRESHOLD = 0.5
"""The review threshold of an adapter that brings none (trained before adapters chose their own) and of zero-shot."""
DEFAULT_REVIEW_PRECISION = 0.95
"""What `qcat train` aims for unless told otherwise: 95% of the answers routed to a label are right."""
DEFAULT_KNOWN_COVERAGE = 0.97
"""Where `qcat train` draws the open-set boundary unless told otherwise: at the distance that keeps this share of
held-out questions of known labels inside (chosen on Banking77 class splits of the training data, docs/training.md)."""

Goal = Literal["precision", "unknown_recall", "coverage", "fixed"]
"""How the threshold was chosen: the lowest reaching a precision of routed answers, the lowest sending a share of
the held-out unknown questions to review, the highest still routing a share of the held-out answers, or given
(`DEFAULT_REVIEW_THRESHOLD`)."""
ReviewReason = Literal["outside", "none_of_these", "low_confidence"]
OutsideGoal = Literal["known_coverage", "balanced"]
"""How the outside boundary was chosen: the distance that keeps a share of held-out questions of known labels
inside, or, when the data has a 'none of these' label, the one that best separates its held-out questions from the
known ones (the mean of known questions routed right and 'none of these' questions sent to review)."""


class RoutingPolicy(BaseModel):
    """An adapter's rule for sending an answer to review instead of its label's route, and what it was chosen for."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    review_threshold: float = Field(default=DEFAULT_REVIEW_THRESHOLD, ge=0.0, le=1.0)
    unknown_label: str | None = Field(
        default=None, description="A trained 'none of these' label: its answers always go to review."
    )
    goal: Goal = "fixed"
    target: float | None = Field(
        default=None, gt=0.0, le=1.0, description="The precision, unknown recall or coverage aimed at."
    )
    expected: dict[str, float] = Field(
        default_factory=dict, description="Held-out figures at the threshold: precision, coverage, unknown_recall."
    )
    outside_distance: float | None = Field(
        default=None,
        gt=0.0,
        allow_inf_nan=False,
        description="Answers whose question lies farther than this from every label's questions (the adapter's "
        "open-set distance) go to review; None: no such rule (an adapter without open-set statistics).",
    )
    outside_goal: OutsideGoal | None = None
    outside_target: float | None = Field(default=None, gt=0.0, le=1.0)

    def review_reason(
        self, label: str, confidence: float, distance: float | None = None, threshold: float | None = None
    ) -> ReviewReason | None:
        """Why an answer goes to review, or None when it goes to its label's route (`threshold` overrides the
        policy's confidence threshold). The question's place comes first: far from every label, no label fits."""
        if self.outside_distance is not None and distance is not None and not distance <= self.outside_distance:
            return "outside"
        if label == self.unknown_label:
            return "none_of_these"
        if confidence < (self.review_threshold if threshold is None else threshold):
            return "low_confidence"
        return None

    def routes(
        self, label: str, confidence: float, threshold: float | None = None, distance: float | None = None
    ) -> bool:
        """Whether an answer goes to its label's route (`review_reason` finds none)."""
        return self.review_reason(label, confidence, distance, threshold) is None
