"""`qcat demo`: the whole pipeline on one machine, offline: embedded broker, a real worker process, a stream of
sample questions, and the routed results live in the terminal."""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from qcat.schemas.events import QuestionEvent
from qcat.schemas.topics import Topics
from qcat.settings import DEFAULT_BASE_MODEL, TINY_NAME
from qcat.worker.broker import FAST_JOIN_SESSION_TIMEOUT, EmbeddedBroker, free_port
from qcat.worker.processes import terminate, wait_ready
from qcat.worker.send import read_questions

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "trec" / "test.jsonl"
TRAINING = SAMPLES.with_name("train.jsonl")
PREFIX = "demo"
FIT = ("--epochs", "4", "--batch-size", "64", "--learning-rate", "3e-3", "--dtype", "float32")
FIT_ROWS = 2000
"""A quick fit of the built-in model on TREC's training questions: far from a real model, but its labels beat
chance several times over (docs/worker.md), so the demo shows routing that means something."""


@dataclass(frozen=True)
class Choice:
    base_model: str
    adapter: Path | None
    why: str
    fallback: bool = False
    """Nothing better was given or found: the built-in model, which the demo fits first."""


def choose_model(adapter: Path | None, base_model: str | None, registry: str | None = None) -> Choice:
    """The best model available offline: a given adapter, else the registry's promoted one, else the hub model if
    cached, else the built-in one. An adapter brings its own base model (its manifest's) unless one is given."""
    why = f"adapter {adapter} was given"
    if adapter is None and registry is not None:
        from qcat.registry import Registry

        adapter = Registry(registry).current_path()
        if adapter is not None:
            why = f"{adapter.name} is the promoted adapter in the registry {registry}"
    if adapter is not None:
        from qcat.manifest import read_manifest

        return Choice(base_model or read_manifest(adapter).base_model, adapter, why)
    if base_model is not None:
        return Choice(base_model, None, "--base-model was given")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(DEFAULT_BASE_MODEL, "config.json")
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        cached = None
    if isinstance(cached, str):
        return Choice(DEFAULT_BASE_MODEL, None, f"{DEFAULT_BASE_MODEL} is in the local Hugging Face cache (zero-shot)")
    return Choice(
        TINY_NAME,
        None,
        f"no adapter given or promoted and {DEFAULT_BASE_MODEL} is not cached: using the built-in random-weight "
        "model; the plumbing (batching, routing, dead letters) is real",
        fallback=True,
    )


def fit_small_adapter(choice: Choice, tmp: Path, console: Console) -> Choice:
    """Offline, the built-in model's labels are noise: fit an adapter on TREC's training questions first (through
    `qcat train`, as a user would), so that the routed labels mean something, and say so."""
    if not choice.fallback or not TRAINING.is_file():  # asked for the built-in model as it is: served as it is
        return choice
    out, rows = tmp / "demo-adapter", tmp / "fit.jsonl"
    lines = TRAINING.read_text(encoding="utf-8").splitlines()
    rows.write_text("\n".join(lines[:: max(1, len(lines) // FIT_ROWS)]) + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "qcat", "train", str(rows), "--out", str(out), "--base-model", TINY_NAME, *FIT]
    message = (
        f"fitting a small adapter on {FIT_ROWS:,} of TREC's training questions first (about half a minute on a CPU)"
    )
    console.print(message)
    with console.status("fitting"):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        console.print(f"[yellow]could not fit the demo adapter; serving the untrained model[/]: {done.stderr[-300:]}")
        return choice
    accuracy = json.loads(done.stdout.strip().splitlines()[-1])["accuracy"]
    console.print(f"fitted: {accuracy:.0%} accurate on held-out questions (a real base model does far better)")
    return Choice(TINY_NAME, out, choice.why + f", fitted for this demo on {TRAINING.name}")


def run_demo(
    *, count: int, rate: float, adapter: Path | None, base_model: str | None, registry: str | None, console: Console
) -> int:
    samples = read_questions(SAMPLES)
    questions = [samples[index % len(samples)] for index in range(count)]  # more than there are: cycled
    with tempfile.TemporaryDirectory(prefix="qcat-demo-") as tmp, EmbeddedBroker() as broker:
        choice = fit_small_adapter(choose_model(adapter, base_model, registry), Path(tmp), console)
        console.print(f"[bold]model:[/] {choice.base_model}" + (f" + {choice.adapter}" if choice.adapter else ""))
        console.print(f"[dim]why: {choice.why}[/]")
        console.print(f"broker: {broker.address} (embedded Tansu, in memory)")
        worker, web_port = start_worker(broker.address, choice, Path(tmp))
        try:
            wait_ready(worker, web_port, Path(tmp) / "worker.log")
            console.print(f"worker: ready (metrics on http://127.0.0.1:{web_port}/metrics)")
            rows = asyncio.run(stream(broker.address, questions, rate, console))
        finally:
            terminate(worker)
    summarize(rows, len(questions), console)
    return 0 if len(rows) == len(questions) else 1


def start_worker(address: str, choice: Choice, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    web_port = free_port()
    env = {
        **os.environ,
        "QCAT_BROKERS": address,
        "QCAT_TOPIC_PREFIX": PREFIX,
        "QCAT_APP_ID": "qcat-demo",
        "QCAT_BASE_MODEL": choice.base_model,
        "QCAT_PARTITIONS": "2",
        "QCAT_WEB_PORT": str(web_port),
        "QCAT_DATA_DIR": str(tmp / "faust"),
        "QCAT_MAX_WAIT": "0.05",
        "QCAT_SESSION_TIMEOUT": str(FAST_JOIN_SESSION_TIMEOUT),
        # the adapter's own routing policy: what it sends to review, and why, is part of the show
        "QCAT_ZERO_SHOT": "true",  # no adapter given or promoted: the base model zero-shot, on purpose
    }
    if choice.adapter is not None:
        env["QCAT_ADAPTER"] = str(choice.adapter)
    with (tmp / "worker.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "qcat", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    return process, web_port


async def stream(address: str, questions: list[str], rate: float, console: Console) -> list[dict[str, Any]]:
    """Send the questions at `rate` per second while showing each categorized event and where it was routed."""
    topics = Topics.build(PREFIX)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=address, group_id="qcat-demo-viewer", auto_offset_reset="earliest", metadata_max_age_ms=500
    )
    route = re.escape(f"{PREFIX}.route.")
    consumer.subscribe(pattern=f"^({route}.*|{re.escape(topics.review)}|{re.escape(topics.dlq)})$")
    producer = AIOKafkaProducer(bootstrap_servers=address, linger_ms=5)
    await consumer.start()
    await producer.start()
    rows: list[dict[str, Any]] = []

    async def send() -> None:
        for index, text in enumerate(questions):
            event = QuestionEvent(event_id=f"demo-{index}", text=text)
            await producer.send(topics.incoming, event.model_dump_json().encode(), key=event.event_id.encode())
            await asyncio.sleep(1 / rate)
        await producer.flush()

    sender = asyncio.create_task(send())
    deadline = time.monotonic() + 60 + len(questions) / rate
    try:
        with Live(render(rows), console=console, refresh_per_second=8) as live:
            while len(rows) < len(questions) and time.monotonic() < deadline:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    for record in records:
                        value = json.loads(record.value)
                        rows.append({**value, "route": record.topic})
                        if not console.is_terminal:  # no live table there: one line per routed question
                            console.print(line(rows[-1]))
                live.update(render(rows))
        await sender
    finally:
        await producer.stop()
        await consumer.stop()
    return rows


def render(rows: list[dict[str, Any]], last: int = 15) -> Table:
    table = Table(title=f"routed {len(rows)} questions (latest {min(last, len(rows))})", expand=True)
    for column, justify in (
        ("question", "left"),
        ("label", "left"),
        ("conf.", "right"),
        ("route", "left"),
        ("latency", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in rows[-last:]:
        if "reason" in row:
            table.add_row(row.get("payload", "")[:60], "-", "-", f"[red]{row['route']}[/] ({row['reason']})", "-")
        else:
            route = row["route"] + (f" ({row['review_reason']})" if row.get("review_reason") else "")
            table.add_row(
                row["text"][:60], row["label"], f"{row['confidence']:.2f}", route, f"{row['latency_ms']:.0f} ms"
            )
    return table


def line(row: dict[str, Any]) -> str:
    if "reason" in row:
        return f"{row['route']} ({row['reason']}): {row.get('payload', '')[:60]}"
    why = f" ({row['review_reason']})" if row.get("review_reason") else ""
    return f"{row['route']}{why}: {row['label']} {row['confidence']:.2f} {row['text'][:60]}"


def summarize(rows: list[dict[str, Any]], sent: int, console: Console) -> None:
    console.print()
    routes: dict[str, int] = {}
    for row in rows:
        routes[row["route"]] = routes.get(row["route"], 0) + 1
    latencies = sorted(row["latency_ms"] for row in rows if "latency_ms" in row)
    console.print(
        f"[bold]sent {sent}, routed {len(rows)}[/]: " + ", ".join(f"{k}={v}" for k, v in sorted(routes.items()))
    )
    if latencies:
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        console.print(f"end-to-end latency: p50 {statistics.median(latencies):.0f} ms, p99 {p99:.0f} ms")
