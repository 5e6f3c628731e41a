"""Shadow scoring in the worker: a registered candidate labels a share of each batch's events beside the serving
adapter (`qcat.shadow` keeps the record). Routes never change: the candidate's answers only become records on
`<prefix>.shadow` (each disagreement with both answers, one tally per batch) and metrics. Events are sampled by a hash
of their `event_id`, so every worker, and a redelivery, picks the same ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from qcat.classifier import Classifier, Prediction
from qcat.schemas.events import QuestionEvent, ShadowAnswer, ShadowRecord


@dataclass(frozen=True)
class Shadow:
    """The candidate in shadow and the share of events it scores."""

    classifier: Classifier
    sample: float

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
) -> list[ShadowRecord]:
    """The candidate's view of a batch: a record per disagreement (label or route), and the batch's tally."""
    picked = [i for i, event in enumerate(events) if shadow.picks(event.event_id)]
    if not picked:
        return []
    candidate = shadow.classifier
    predictions = candidate.classify([events[i].text for i in picked])
    name, serving_name = candidate.adapter_version or "zero-shot", serving.adapter_version
    records, agreed = [], 0
    for index, theirs in zip(picked, predictions, strict=True):
        ours, candidates = answer(serving, served[index], threshold), answer(candidate, theirs, threshold)
        if (ours.label, ours.routed) == (candidates.label, candidates.routed):
            agreed += 1
            continue
        event = events[index]
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
        kind="tally", candidate_version=name, serving_version=serving_name, scored=len(picked), agreed=agreed
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
