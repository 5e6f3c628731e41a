"""Shadow scoring's record keeping: which registered candidate workers score in shadow (the registry's
`shadow.json`), what they saw (`<prefix>.shadow`, read back and summarized), and the evidence a promotion can require.

A candidate in shadow labels a share of live events beside the serving adapter; workers never route by it. They
publish every disagreement (both answers), every correction scored by both, and a tally per batch. `qcat adapters
compare` reads that topic, summarizes it (agreement, label flips, each adapter's accuracy on the corrections), plots
it, and keeps the summary in the registry (`shadow/<version>.json`), where `adapters promote --require-shadow-...`
finds it. Torch-free: it reads records, not models.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from qcat.errors import RegistryError
from qcat.kafka import KafkaSettings, kafka_errors
from qcat.registry import Registry
from qcat.schemas.events import ShadowRecord
from qcat.schemas.topics import Topics

POINTER = "shadow.json"


def shadow_of(registry: Registry) -> tuple[str, float] | None:
    """The candidate in shadow and the share of events it scores, or None."""
    try:
        raw = json.loads(registry.fs.cat_file(f"{registry.root}/{POINTER}"))
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise RegistryError(f"{registry.url}/{POINTER} is damaged; `qcat adapters shadow --stop` clears it") from error
    return (str(raw["version"]), float(raw["sample"])) if raw else None


def set_shadow(registry: Registry, version: str | None, sample: float = 1.0) -> None:
    """Put `version` (registered) in shadow, scoring a share `sample` of events; None takes the shadow away."""
    if version is not None:
        registry.show(version)  # registered, with a valid manifest
    content = {"version": version, "sample": sample} if version is not None else {}
    registry.replace_file(POINTER, json.dumps(content).encode())


def read_records(settings: KafkaSettings, timeout: float = 10.0) -> list[ShadowRecord]:
    """Every record on `<prefix>.shadow` up to its current end (records that do not parse are skipped)."""
    return asyncio.run(_read(settings, Topics.build(settings.topic_prefix).shadow, timeout))


async def _read(settings: KafkaSettings, topic: str, timeout: float) -> list[ShadowRecord]:
    consumer = AIOKafkaConsumer(**settings.kafka_client_options(), group_id=None, enable_auto_commit=False)
    records: list[ShadowRecord] = []
    with kafka_errors(settings, f"cannot read {topic} on"):
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
            if not partitions:
                return records
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            while [p for p in partitions if await consumer.position(p) < ends[p]]:
                batches = await consumer.getmany(timeout_ms=int(timeout * 1000))
                if not batches:
                    break
                for messages in batches.values():
                    for message in messages:
                        try:
                            records.append(ShadowRecord.model_validate_json(message.value or b""))
                        except ValidationError:
                            continue
        finally:
            await consumer.stop()
    return records


def summarize(records: list[ShadowRecord], candidate: str) -> dict[str, Any]:
    """What shadow scoring of `candidate` showed: events scored and agreed on, the most frequent label flips, and
    each adapter's accuracy on the corrections that arrived while it ran."""
    mine = [r for r in records if r.candidate_version == candidate]
    tallies = [r for r in mine if r.kind == "tally"]
    scored, agreed = sum(r.scored for r in tallies), sum(r.agreed for r in tallies)
    flips = Counter(
        (r.serving.label, r.candidate.label) for r in mine if r.kind == "disagreement" and r.serving and r.candidate
    )
    corrections = [r for r in mine if r.kind == "correction" and r.serving and r.candidate]
    return {
        "candidate": candidate,
        "serving": sorted({r.serving_version or "zero-shot" for r in mine}),
        "events": scored,
        "agreement": agreed / scored if scored else None,
        "flips": [{"serving": a, "candidate": b, "events": n} for (a, b), n in flips.most_common(20)],
        "corrections": len(corrections),
        "serving_correct": sum(r.serving.label == r.corrected_label for r in corrections if r.serving),
        "candidate_correct": sum(r.candidate.label == r.corrected_label for r in corrections if r.candidate),
    }


def keep_evidence(registry: Registry, evidence: dict[str, Any]) -> None:
    registry.replace_file(f"shadow/{evidence['candidate']}.json", json.dumps(evidence).encode())


def evidence_of(registry: Registry, version: str) -> dict[str, Any] | None:
    try:
        evidence: dict[str, Any] = json.loads(registry.fs.cat_file(f"{registry.root}/shadow/{version}.json"))
    except FileNotFoundError:
        return None
    return evidence


def lacking(evidence: dict[str, Any] | None, *, events: int, corrections: int) -> str | None:
    """Why the shadow evidence does not allow promotion (None: it does): too few events or corrections scored, or
    the candidate less accurate than the serving adapter on those corrections."""
    if evidence is None:
        return "no shadow evidence: put it in shadow (`qcat adapters shadow`), then `qcat adapters compare` it"
    if evidence["events"] < events or evidence["corrections"] < corrections:
        return (
            f"shadow evidence too thin: {evidence['events']} events and {evidence['corrections']} corrections "
            f"scored, {events} and {corrections} required"
        )
    if evidence["candidate_correct"] < evidence["serving_correct"]:
        return (
            f"worse in shadow on corrections: {evidence['candidate_correct']} of {evidence['corrections']} right "
            f"against {evidence['serving_correct']} for the serving adapter"
        )
    return None


def plot(evidence: dict[str, Any], path: Path) -> None:
    """Agreement and each adapter's accuracy on corrections (left); the most frequent label flips (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    total = max(evidence["corrections"], 1)
    bars = {
        "agreement on events": evidence["agreement"] or 0.0,
        "serving: right on corrections": evidence["serving_correct"] / total,
        "candidate: right on corrections": evidence["candidate_correct"] / total,
    }
    left.barh(list(bars), list(bars.values()), color=["tab:grey", "tab:blue", "tab:orange"])
    for y, value in enumerate(bars.values()):
        left.text(value, y, f" {value:.1%}", va="center")
    left.set_xlim(0, 1.15)
    left.set_title(f"{evidence['events']} events, {evidence['corrections']} corrections scored by both")
    flips = evidence["flips"][:10][::-1]
    right.barh([f"{f['serving']} -> {f['candidate']}" for f in flips], [f["events"] for f in flips], color="tab:red")
    right.set_xlabel("events")
    right.set_title("label flips, serving -> candidate (most frequent)")
    figure.suptitle(f"shadow scoring of {evidence['candidate']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
