"""Shadow scoring in groups: while batches come full, a sampled share waits until it makes up half the candidate's
preferred batch; the first batch that is not full takes what waited; a change of serving adapter drops it."""

from __future__ import annotations

from qcat.classifier import Classifier, load_classifier
from qcat.schemas.events import QuestionEvent, ShadowRecord
from qcat.settings import EngineSettings
from qcat.worker.shadow import Shadow, shadow_records


def events(start: int, count: int) -> list[QuestionEvent]:
    return [QuestionEvent(event_id=f"e{i}", text=f"Who wrote book number {i} ?") for i in range(start, start + count)]


def tallies(records: list[ShadowRecord]) -> list[int]:
    return [record.scored for record in records if record.kind == "tally"]


def test_a_sample_of_full_batches_is_scored_in_groups() -> None:
    settings = EngineSettings(base_model="tiny-qwen3", device="cpu", dtype="float32")
    serving: Classifier = load_classifier(settings)
    shadow = Shadow(load_classifier(settings), sample=0.25)
    group = shadow.classifier.preferred_batch // 2

    def batch(start: int, count: int, *, full: bool, by: Classifier = serving) -> list[int]:
        questions = events(start, count)
        answers = by.classify([event.text for event in questions])
        return tallies(shadow_records(questions, answers, by, shadow, None, batch_full=full))

    picked = 0
    start = 0
    while picked + sum(shadow.picks(e.event_id) for e in events(start, 16)) < group:
        picked += sum(shadow.picks(e.event_id) for e in events(start, 16))
        assert batch(start, 16, full=True) == []  # waiting: too few for a group
        start += 16
    due = picked + sum(shadow.picks(e.event_id) for e in events(start, 16))
    assert batch(start, 16, full=True) == [due]  # a group: scored in one request
    start += 16
    waiting = sum(shadow.picks(e.event_id) for e in events(start, 16))
    assert batch(start, 16, full=True) == []
    start += 16
    last = sum(shadow.picks(e.event_id) for e in events(start, 4))
    assert batch(start, 4, full=False) == [waiting + last]  # a batch that is not full takes what waited
    start += 4

    assert batch(start, 16, full=True) == []
    swapped = load_classifier(settings)  # a new serving adapter: what waited was answered by the previous one
    start += 16
    again = sum(shadow.picks(e.event_id) for e in events(start, 4))
    assert batch(start, 4, full=False, by=swapped) == ([again] if again else [])
