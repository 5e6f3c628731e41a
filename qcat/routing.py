"""Where a classified question goes: its label's route, or review. An adapter carries its own routing policy (its
manifest's `routing`), chosen on held-out data when it was trained, so a hot swap changes the review threshold
together with the weights; `QCAT_CONFIDENCE_THRESHOLD` overrides the threshold for every adapter. Torch-free: the
worker's routing reads it without a model."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_REVIEW_THRESHOLD = 0.5
"""The review threshold of an adapter that brings none (trained before adapters chose their own) and of zero-shot."""
DEFAULT_REVIEW_PRECISION = 0.95
"""What `qcat train` aims for unless told otherwise: 95% of the answers routed to a label are right."""

Goal = Literal["precision", "unknown_recall", "coverage", "fixed"]
"""How the threshold was chosen: the lowest reaching a precision of routed answers, the lowest sending a share of
the held-out unknown questions to review, the highest still routing a share of the held-out answers, or given
(`DEFAULT_REVIEW_THRESHOLD`)."""


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

    def routes(self, label: str, confidence: float, threshold: float | None = None) -> bool:
        """Whether an answer goes to its label's route: confident enough (`threshold` overrides the policy's), and not
        the 'none of these' label."""
        return confidence >= (self.review_threshold if threshold is None else threshold) and label != self.unknown_label
