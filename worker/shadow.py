"""Shadow scoring in the worker: a registered candidate labels a share of each batch's events beside the serving
adapter (`qcat.shadow` keeps the record). Routes never change: the candidate's answers only become records on
`<prefix>.shadow` (each disagreement with both answers, one tally per batch) and metrics. Events are sampled by a hash
of their `event_id`, so every worker, and a redelivery, picks the same ones.

A sampled share of a full micro-batch is a small request, and on a GPU each request of another adapter costs about a
pass (bench/results/shadow.json): while batches come full, picked events wait until they make up half the
candidate's preferred batch, and go with the first batch that is not full. What waits is lost if the worker stops
(only shadow records: routes are never deferred) or when the serving adapter changes (its answers are stale).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from qcat.classifier import Classifier, Prediction
from qcat.schemas.events import QuestionEvent, ShadowAnswer, ShadowRecord


@dataclass
class Shadow:
    """The candidate in shadow, the share of events it scores, and the picked events waiting to be scored (only the
    inference thread touches them)."""

    classifier: Classifier
    sample: float
    waiting: list[tuple[QuestionEvent, Prediction]] = field(default_factory=list)
    waiting_for: Classifier | None = None
    """The serving classifier that answered the waiting events."""

    def due(
        self, picked: list[tuple[QuestionEvent, Prediction]], serving: Classifier, *, batch_full: bool
    ) -> list[tuple[QuestionEvent, Prediction]]:
        """The picked events to score now, with those that waited (see the module)."""
        if self.waiting_for is not serving:
            self.waiting = []
        self.waiting_for = serving
        self.waiting += picked
        if batch_full and 2 * len(self.waiting) < self.classifier.preferred_batch:
            return []
        due, self.waiting = self.waiting, []
        return due

    def picks(self, event_id: str) -> bool:
        if self.sample >= 1.0:
            return True
        digest = hashlib.blake2b(event_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.sample


def answer(classifier: Classifier, prediction: Prediction, threshold: float | None) -> ShadowAnswer:
    reason = classifier.routing.review_reason(prediction.label, prediction.confidence, prediction.distance, threshold)
    return ShadowAnswer(
        version=classifier.adapter_version,
        label=prediction.label,
        confidence=prediction.confidence,
        routed=reason is None,
    )


def shadow_records(
    events: Sequence[QuestionEvent],
    served: Sequence[Prediction],
    serving: Classifier,
    shadow: Shadow,
    threshold: float | None,
    *,
    batch_full: bool = False,
) -> list[ShadowRecord]:
    """The candidate's view of the picked events due now (`Shadow.due`): a record per disagreement (label or route),
    and their tally."""
    picked = [(event, ours) for event, ours in zip(events, served, strict=True) if shadow.picks(event.event_id)]
    due = shadow.due(picked, serving, batch_full=batch_full)
    if not due:
        return []
    candidate = shadow.classifier
    predictions = candidate.classify([event.text for event, _ in due])
    name, serving_name = candidate.adapter_version or "zero-shot", serving.adapter_version
    records, agreed = [], 0
    for (event, served_answer), theirs in zip(due, predictions, strict=True):
        ours, candidates = answer(serving, served_answer, threshold), answer(candidate, theirs, threshold)
        if (ours.label, ours.routed) == (candidates.label, candidates.routed):
            agreed += 1
            continue
        records.append(
            ShadowRecord(
                kind="disagreement",
                candidate_version=name,
                serving_version=serving_name,
                event_id=event.event_id,
                text=event.text,
                serving=ours,
                candidate=candidates,
            )
        )
    tally = ShadowRecord(
        kind="tally", candidate_version=name, serving_version=serving_name, scored=len(due), agreed=agreed
    )
    return [*records, tally]


def correction_records(
    texts: Sequence[str],
    labels: Sequence[str],
    serving: Classifier,
    shadow: Shadow,
    threshold: float | None,
) -> list[ShadowRecord]:
    """Corrections scored by both adapters while a candidate is in shadow: the truth beside both answers."""
    if not texts:
        return []
    ours, theirs = serving.classify(list(texts)), shadow.classifier.classify(list(texts))
    name = shadow.classifier.adapter_version or "zero-shot"
    return [
        ShadowRecord(
            kind="correction",
            candidate_version=name,
            serving_version=serving.adapter_version,
            text=text,
            corrected_label=label,
            serving=answer(serving, a, threshold),
            candidate=answer(shadow.classifier, b, threshold),
        )
        for text, label, a, b in zip(texts, labels, ours, theirs, strict=True)
    ]
