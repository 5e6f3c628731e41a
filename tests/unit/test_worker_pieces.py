"""The worker's pure pieces: topic names, decoding into events or dead letters, batch processing, settings."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import weakref
from collections.abc import Sequence

import pytest
import torch
from aiokafka import errors

from qcat.classifier import ConstantClassifier, Prediction, backend
from qcat.errors import ContractError, InferenceError, UsageError
from qcat.pytorch.plan import plan_passes
from qcat.routing import RoutingPolicy
from qcat.schemas.events import CategorizedEvent, DeadLetter, DeadLetterReason
from qcat.schemas.taxonomy import Taxonomy
from qcat.schemas.topics import Topics
from qcat.settings import EngineSettings
from qcat.worker.decode import MAX_DEAD_LETTER_BYTES, Rejected, dead_letter, decode_question
from qcat.worker.main import settle_garbage, start_inference
from qcat.worker.process import Record, process_batch
from qcat.worker.publisher import murmur2, refused_for_good
from qcat.worker.settings import WorkerSettings

TAXONOMY = Taxonomy.from_names(["HUM:ind", "LOC:city", "NUM"])
TOPICS = Topics.build("q", TAXONOMY)


def test_labels_map_to_legal_topic_names() -> None:
    """Characters Kafka forbids become '_': TREC's HUM:ind routes to q.route.HUM_ind."""
    assert TOPICS.routes == {"HUM:ind": "q.route.HUM_ind", "LOC:city": "q.route.LOC_city", "NUM": "q.route.NUM"}
    assert (TOPICS.incoming, TOPICS.categorized, TOPICS.review, TOPICS.dlq) == (
        "q.incoming",
        "q.categorized",
        "q.review",
        "q.dlq",
    )


def test_labels_that_would_share_a_route_are_refused() -> None:
    """'a:b' and 'a/b' both map to a_b: refused at start-up rather than mixing two routes."""
    with pytest.raises(ContractError, match="same routing topic"):
        Topics.build("q", Taxonomy.from_names(["a:b", "a/b"]))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, DeadLetterReason.SCHEMA_VIOLATION),
        (b"\xff\xfe", DeadLetterReason.UNDECODABLE),
        (b"{oops", DeadLetterReason.INVALID_JSON),
        (b'{"event_id": "e", "text": 5}', DeadLetterReason.SCHEMA_VIOLATION),
        (b'{"event_id": "e", "text": "hi", "extra": 1}', DeadLetterReason.SCHEMA_VIOLATION),
        (b'{"event_id": "e", "text": " \\n\\t "}', DeadLetterReason.EMPTY_TEXT),
        (json.dumps({"event_id": "e", "text": "x" * 50}).encode(), DeadLetterReason.TEXT_TOO_LONG),
        (json.dumps({"event_id": "e", "text": "x" * 20_000}).encode(), DeadLetterReason.TEXT_TOO_LONG),
    ],
)
def test_bad_input_is_rejected_with_its_reason(raw: bytes | None, reason: DeadLetterReason) -> None:
    """Each kind of bad input maps to its documented dead-letter reason."""
    decoded = decode_question(raw, max_text_chars=40)
    assert isinstance(decoded, Rejected)
    assert decoded.reason == reason


@pytest.mark.parametrize("unit", [b"x", b'"', b"\x01", "\u00e9".encode(), b"\\"])
def test_a_dead_letter_stays_under_its_byte_bound_however_its_payload_escapes(unit: bytes) -> None:
    """A 550 KB payload of characters that JSON escapes (up to six bytes each) is cut, and flagged, until the dead
    letter's JSON fits `MAX_DEAD_LETTER_BYTES`, and keeps as much of the payload as fits."""
    raw = unit * (550_000 // len(unit))
    letter = dead_letter(raw, Rejected(DeadLetterReason.TEXT_TOO_LONG, "long"), topic="t", partition=1, offset=9)
    size = len(letter.model_dump_json().encode())
    assert letter.payload_truncated
    assert 0.8 * MAX_DEAD_LETTER_BYTES < size <= MAX_DEAD_LETTER_BYTES
    assert raw.decode().startswith(letter.payload)
    small = dead_letter(b"x" * 1000, Rejected(DeadLetterReason.TEXT_TOO_LONG, "long"), topic="t", partition=1, offset=9)
    assert (small.payload, small.payload_truncated) == ("x" * 1000, False)
    binary = dead_letter(b"\xff", Rejected(DeadLetterReason.UNDECODABLE, "bad"), topic="t", partition=0, offset=0)
    assert (binary.payload, binary.payload_encoding) == ("/w==", "base64")


def record(offset: int, value: bytes, key: bytes = b"k") -> Record:
    return Record(key=key, value=value, topic="q.incoming", partition=0, offset=offset, headers=[("h", b"v")])


class Confident(ConstantClassifier):
    """Answers one label at one confidence, under a given routing policy (what an adapter's manifest brings)."""

    def __init__(self, label: str, confidence: float, routing: RoutingPolicy) -> None:
        super().__init__(TAXONOMY)
        self._prediction = Prediction(label, confidence, {label: confidence}, False)
        self._routing = routing

    @property
    def routing(self) -> RoutingPolicy:
        return self._routing


def test_the_serving_adapter_s_policy_routes_unless_the_setting_overrides_it() -> None:
    """The classifier's own threshold applies when QCAT_CONFIDENCE_THRESHOLD is unset (a hot swap brings the new
    adapter's with it); a set threshold wins; the 'none of these' label always goes to review."""
    records = [record(0, b'{"event_id": "a", "text": "Who ?"}')]

    def route(classifier: Confident, threshold: float | None) -> str:
        result = process_batch(records, classifier, TOPICS, threshold=threshold, max_text_chars=100)
        return result.outputs[1].topic

    strict, lenient = RoutingPolicy(review_threshold=0.9), RoutingPolicy(review_threshold=0.6)
    assert route(Confident("NUM", 0.7, strict), None) == "q.review"
    assert route(Confident("NUM", 0.7, lenient), None) == "q.route.NUM"
    assert route(Confident("NUM", 0.7, strict), 0.5) == "q.route.NUM"
    assert route(Confident("NUM", 1.0, RoutingPolicy(unknown_label="NUM")), 0.0) == "q.review"


def test_batch_routes_by_confidence_and_dead_letters_bad_records() -> None:
    """Valid events go to categorized and their route; bad ones to the DLQ; headers are carried to every output."""
    records = [record(0, b'{"event_id": "a", "text": "Who ?"}'), record(1, b"{bad")]
    result = process_batch(records, ConstantClassifier(TAXONOMY), TOPICS, threshold=0.5, max_text_chars=100)
    assert [o.topic for o in result.outputs] == ["q.dlq", "q.categorized", "q.route.HUM_ind"]
    assert all(o.headers == [("h", b"v")] for o in result.outputs)
    event = CategorizedEvent.model_validate_json(result.outputs[1].value)
    assert (event.event_id, event.label, event.confidence) == ("a", "HUM:ind", 1.0)
    letter = DeadLetter.model_validate_json(result.outputs[0].value)
    assert (letter.reason, letter.offset, letter.payload) == (DeadLetterReason.INVALID_JSON, 1, "{bad")
    high = process_batch(records[:1], ConstantClassifier(TAXONOMY), TOPICS, threshold=1.01, max_text_chars=100)
    assert [o.topic for o in high.outputs] == ["q.categorized", "q.review"]


class PoisonClassifier(ConstantClassifier):
    """Fails any batch that contains the word 'poison', as a model error on one input would."""

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        if any("poison" in text for text in texts):
            raise RuntimeError("non-finite logits")
        return super().classify(texts)


def test_one_poisonous_input_does_not_sink_its_batch() -> None:
    """A batch whose inference fails is retried one by one: only the culprit is dead-lettered."""
    records = [
        record(i, json.dumps({"event_id": f"e{i}", "text": t}).encode())
        for i, t in enumerate(["fine", "poison", "also fine"])
    ]
    result = process_batch(records, PoisonClassifier(TAXONOMY), TOPICS, threshold=0.0, max_text_chars=100)
    assert [e.event_id for e in result.categorized] == ["e0", "e2"]
    assert [(d.reason, d.offset) for d in result.dead_letters] == [(DeadLetterReason.INFERENCE_ERROR, 1)]


def test_secrets_never_print() -> None:
    """The SASL password is a SecretStr: masked in repr and dumps, available only on purpose."""
    settings = WorkerSettings(sasl_password="hunter2", security_protocol="SASL_PLAINTEXT", sasl_username="u")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in settings.model_dump_json()
    assert settings.kafka_client_options()["sasl_plain_password"] == "hunter2"


def test_the_forward_pass_follows_max_batch_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """QCAT_MAX_BATCH=512 (the GPU overlay) classifies a micro-batch in one forward pass of up to 512 questions, not
    eight of 64; an explicit QCAT_BATCH_SIZE still wins. Unset, both follow the device: the serving plan's."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 1)

    def batch(settings: WorkerSettings, device: torch.device) -> int:
        return plan_passes(settings.for_engine(), device, torch.bfloat16, packable=True).batch_size

    assert (batch(WorkerSettings(), cpu), batch(WorkerSettings(), gpu)) == (64, 512)
    assert WorkerSettings().with_micro_batch(512).micro_batch == 512
    monkeypatch.setenv("QCAT_MAX_BATCH", "512")
    assert batch(WorkerSettings(), cpu) == 512
    assert WorkerSettings().with_micro_batch(64).micro_batch == 512
    assert batch(WorkerSettings(max_batch=128), gpu) == 128
    monkeypatch.setenv("QCAT_BATCH_SIZE", "32")
    assert batch(WorkerSettings(), gpu) == 32


def test_the_plan_compiles_and_graphs_packed_passes_only_when_serving_on_a_gpu() -> None:
    """One decision for every command: packed passes where the model and device allow them; compile and CUDA graphs
    on top only for a long-running server (the worker), and never asked for on a CPU."""
    gpu, settings = torch.device("cuda"), EngineSettings()
    worker = plan_passes(WorkerSettings().for_engine(), gpu, torch.bfloat16, packable=True)
    command = plan_passes(settings, gpu, torch.bfloat16, packable=True)
    assert (worker.packed, worker.compile, worker.cuda_graphs) == (True, True, True)
    assert (command.packed, command.compile, command.cuda_graphs) == (True, False, False)
    assert not plan_passes(settings, gpu, torch.float32, packable=True).packed
    assert not plan_passes(settings, gpu, torch.bfloat16, packable=False).packed
    cpu = plan_passes(WorkerSettings().for_engine(), torch.device("cpu"), torch.bfloat16, packable=True)
    assert (cpu.packed, cpu.compile, cpu.cuda_graphs, cpu.batch_tokens) == (False, False, False, 256)
    with pytest.raises(UsageError, match="needs a CUDA device"):
        plan_passes(EngineSettings(cuda_graphs=True), torch.device("cpu"), torch.float32, packable=True)


def test_fast_categorized_json_is_exactly_the_contract() -> None:
    """The hot path's hand-written JSON parses as a strict CategorizedEvent and has exactly the model's fields."""
    raw = b'{"event_id": "a", "text": "Wh\\u00f6 ?", "metadata": {"tenant": "t1"}}'
    result = process_batch([record(0, raw)], ConstantClassifier(TAXONOMY), TOPICS, threshold=0.5, max_text_chars=100)
    value = result.outputs[0].value
    assert list(json.loads(value)) == list(CategorizedEvent.model_fields)
    event = CategorizedEvent.model_validate_json(value, strict=True)
    assert (event.text, event.metadata, event.categorized_at.tzinfo is not None) == ("Whö ?", {"tenant": "t1"}, True)
    assert [s.label for s in event.scores] == ["HUM:ind", "LOC:city", "NUM"]


class ThreadRecorder(ConstantClassifier):
    """Records which thread built it and which threads classify with it."""

    def __init__(self, taxonomy: Taxonomy) -> None:
        super().__init__(taxonomy)
        self.threads = {threading.current_thread().name}

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        self.threads.add(threading.current_thread().name)
        return super().classify(texts)


def thread_recorder(settings: EngineSettings) -> ThreadRecorder:
    return ThreadRecorder(Taxonomy.from_names(["A", "B"]))


def test_the_model_loads_warms_up_and_runs_in_one_inference_thread() -> None:
    """Not the main thread: a second OpenMP team there slowed every batch by ~19% (worker.main.start_inference)."""
    settings = WorkerSettings(classifier=f"{__name__}:thread_recorder", max_batch=4)
    inference, classifier = start_inference(settings)
    try:
        inference.submit(classifier.classify, ["a question"]).result()
    finally:
        inference.shutdown()
    assert isinstance(classifier, ThreadRecorder)
    (thread,) = classifier.threads
    assert thread.startswith("qcat-inference"), classifier.threads
    assert gc.get_freeze_count() > 0  # the loaded model is out of the garbage collector's full walks


def test_garbage_is_settled_again_at_each_load() -> None:
    """An engine frozen at one load and replaced later (a hot swap) is collected at the next load, cycles and all."""

    class Engine:
        pass

    engine = Engine()
    engine.itself = engine  # type: ignore[attr-defined]
    settle_garbage()
    assert gc.get_freeze_count() > 0
    replaced = weakref.ref(engine)
    del engine
    settle_garbage()
    assert replaced() is None


@pytest.mark.parametrize("length", range(41))
def test_murmur2_is_kafkas_partition_hash(length: int) -> None:
    """The publisher's murmur2 equals aiokafka's (Kafka's default partitioner) for keys of every tail length."""
    from aiokafka.partitioner import murmur2 as reference

    keys = [bytes(range(256))[:length], bytes(range(255, -1, -1))[:length], ("é" * length).encode()[:length]]
    assert [murmur2(key) for key in keys] == [reference(key) for key in keys]


@pytest.mark.parametrize(
    ("error", "for_good"),
    [
        (errors.MessageSizeTooLargeError(), True),
        (errors.UnknownError(), True),  # what a broker answers when a topic's schema refuses a record
        (errors.TopicAuthorizationFailedError(), True),
        (errors.PolicyViolationError(), True),
        (errors.KafkaConnectionError(), False),
        (errors.KafkaTimeoutError(), False),
        (errors.NotLeaderForPartitionError(), False),
        (errors.BrokerNotAvailableError(), False),
    ],
)
def test_refusals_for_good_are_told_apart_from_transient_failures(error: Exception, for_good: bool) -> None:
    """Only an answer the broker would repeat (the record, the topic's rules, our rights) stops the retries."""
    assert refused_for_good(error) is for_good


class Poisoned(ConstantClassifier):
    """Names the rows it cannot classify, as the engine does for non-finite logits."""

    def __init__(self) -> None:
        super().__init__(TAXONOMY)
        self.calls = 0

    def classify(self, texts: Sequence[str]) -> list[Prediction]:
        self.calls += 1
        bad = tuple(i for i, text in enumerate(texts) if "poison" in text)
        if bad:
            raise InferenceError("non-finite logits", bad_indices=bad)
        return super().classify(texts)


def test_only_the_rows_an_inference_error_names_are_dead_lettered() -> None:
    """The rows named by `InferenceError.bad_indices` become dead letters; the rest are classified again as one
    batch, not one at a time."""
    texts = ["Who ?", "poison ?", "Where ?", "poison again ?"]
    records = [record(i, json.dumps({"event_id": f"e{i}", "text": text}).encode()) for i, text in enumerate(texts)]
    classifier = Poisoned()
    result = process_batch(records, classifier, TOPICS, threshold=0.5, max_text_chars=100)
    assert [letter.offset for letter in result.dead_letters] == [1, 3]
    assert {letter.reason for letter in result.dead_letters} == {DeadLetterReason.INFERENCE_ERROR}
    assert [event.event_id for event in result.categorized] == ["e0", "e2"]
    assert classifier.calls == 2


def test_the_classifier_seam_and_the_worker_s_light_side_never_import_torch() -> None:
    """The protocol, its prediction, the engine's shared steps, the worker's pure pieces, its settings (built, with
    every backend) and the demo load without torch, transformers or peft."""
    light = (
        "qcat.classifier, qcat.engine, qcat.registry, qcat.worker.process, qcat.worker.decode, qcat.worker.publisher, "
        "qcat.worker.demo, qcat.worker.settings"
    )
    probe = (
        f"import sys, {light}; qcat.worker.settings.WorkerSettings(); "
        "qcat.worker.settings.WorkerSettings(classifier='constant').for_engine(); "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_backends_are_found_by_name_or_import_string() -> None:
    """`constant` and `torch` are built in, `module:factory` also works, and anything else is one usage error."""
    settings = EngineSettings()
    assert backend("constant")(settings).model_name == "constant"
    assert backend("qcat.classifier:constant_classifier") is backend("constant")
    assert backend("torch").__name__ == "load_engine"
    with pytest.raises(UsageError, match="neither a backend"):
        backend("no-such-backend")
