"""Reliability under faults, load and hostile input, against the real broker on loopback, with figures.

    python bench/reliability.py            # the soak: writes bench/results/reliability.json and docs/reliability.md
    python bench/reliability.py --quick    # smaller counts (a few minutes); CI runs the same scenarios via pytest

Scenarios (each starts its own embedded broker and `qcat worker` processes on the built-in model):
crashes (SIGKILL at random points while a stream flows, restart each time), rebalances (3 workers in one group,
members join and leave under load), burst (peak RSS while a backlog drains), broker outage (stop, wait, restart),
bad adapters and adapters from outside the registry announced to a running worker, records the broker refuses,
a broker frozen mid-publish, records that cannot be parsed (a header key that is not UTF-8), a full disk under the
corrections store, hostile input
(hypothesis, via tests/unit/test_fuzz.py), and a scan of logs and HTTP endpoints for the secret and the question text.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.announcements import bad_adapters, control_topic_recreated, outside_registry  # noqa: E402
from bench.disk import full_disk  # noqa: E402
from bench.poison import poison_header  # noqa: E402
from bench.refusals import refused_records, stalled_publish  # noqa: E402
from qcat.worker.broker import EmbeddedBroker  # noqa: E402
from tests.integration.kafka import WorkerProcess, consume, produce, question, unique  # noqa: E402

SECRET = "s3cret-that-must-not-leak"
FIGURES_START, FIGURES_END = "<!-- figures:start -->", "<!-- figures:end -->"
MARKER = "zebracorn"  # in every question text: must never reach logs or endpoints


def stream(address: str, topic: str, ids: list[str], rate: float) -> threading.Thread:
    """Produce `ids` as questions at about `rate` per second from a background thread."""

    def run() -> None:
        step = max(1, int(rate / 10))
        for start in range(0, len(ids), step):
            chunk = ids[start : start + step]
            produce(address, topic, [(i.encode(), question(i, f"{MARKER} question {i} ?"), []) for i in chunk])
            time.sleep(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def outcome(address: str, prefix: str, ids: list[str], timeout: float) -> dict[str, Any]:
    """Wait until every input has a categorized event or a dead letter; count losses and duplicates."""
    wanted = set(ids)

    def seen(collected: Any) -> set[str]:
        keys = {
            r.key.decode() for t in (f"{prefix}.categorized", f"{prefix}.dlq") for r in collected.by_topic.get(t, [])
        }
        return keys & wanted

    got = consume(address, [f"{prefix}.categorized", f"{prefix}.dlq"], lambda c: seen(c) >= wanted, timeout=timeout)
    categorized = [r.key.decode() for r in got.by_topic.get(f"{prefix}.categorized", [])]
    return {
        "events": len(ids),
        "lost": len(wanted - seen(got)),
        "duplicates": len(categorized) - len(set(categorized)),
        "dead_letters": len(got.by_topic.get(f"{prefix}.dlq", [])),
    }


def worker(address: str, prefix: str, tmp: Path, **settings: object) -> WorkerProcess:
    return WorkerProcess(address, prefix, tmp, sasl_password=SECRET, **settings)


def crashes(tmp: Path, *, kills: int, events: int, seed: int = 0) -> dict[str, Any]:
    """SIGKILL the worker at random points while `events` flow, restart it each time; then let it drain."""
    rng = random.Random(seed)
    prefix = unique("r-crash")
    ids = [f"crash-id-{i}" for i in range(events)]
    logs: list[Path] = []
    with EmbeddedBroker() as broker:
        feeder = stream(broker.address, f"{prefix}.incoming", ids, rate=events / max(8.0, 2.5 * kills))
        for _ in range(kills):
            process = worker(broker.address, prefix, tmp, max_batch=64).start()
            logs.append(process.log_path)
            time.sleep(rng.uniform(0.5, 2.5))
            process.kill()
        feeder.join()
        final = worker(broker.address, prefix, tmp, max_batch=64).start()
        logs.append(final.log_path)
        try:
            result = outcome(broker.address, prefix, ids, timeout=300)
            endpoints = "".join(final.get(path) for path in ("/metrics", "/healthz", "/readyz"))
        finally:
            final.stop()
    text = "".join(path.read_text(errors="replace") for path in logs)
    result |= {
        "kills": kills,
        "secret_in_logs": SECRET in text,
        "question_text_in_logs": MARKER in text,
        "question_text_or_ids_in_endpoints": MARKER in endpoints or "crash-id-" in endpoints,
    }
    return result


def rebalances(tmp: Path, *, events: int, seconds: float = 45) -> dict[str, Any]:
    """A consumer group under load: members join, one leaves (SIGTERM), one is killed and replaced.

    Tansu does not evict a member whose session times out, so a killed member's partitions move at the next
    rebalance: the replacement's join (as when Kubernetes restarts a pod). Real Kafka also evicts it on its own.
    """
    prefix = unique("r-group")
    ids = [f"g{i}" for i in range(events)]
    with EmbeddedBroker() as broker:
        group = [worker(broker.address, prefix, tmp, partitions=6).start() for _ in range(2)]
        feeder = stream(broker.address, f"{prefix}.incoming", ids, rate=events / seconds)

        def join() -> None:
            group.append(worker(broker.address, prefix, tmp, partitions=6).start())

        steps: list[Callable[[], None]] = [join, lambda: group.pop(0).stop(), join, lambda: group.pop(0).kill(), join]
        for step in steps:
            time.sleep(2)
            step()
        still_flowing = feeder.is_alive()
        feeder.join()
        try:
            result = outcome(broker.address, prefix, ids, timeout=300)
        finally:
            for member in group:
                member.stop()
    return result | {"joins": 3, "leaves": 1, "kills": 1, "stream_still_flowing_after_last_change": still_flowing}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def burst(tmp: Path, *, sizes: list[int]) -> list[dict[str, Any]]:
    """A backlog of `size` events produced at once, drained by one worker: time and peak RSS, per size."""
    rows = []
    for size in sizes:
        prefix = unique("r-burst")
        ids = [f"b{i}" for i in range(size)]
        with EmbeddedBroker() as broker:
            process = worker(broker.address, prefix, tmp, max_batch=256).start()
            try:
                idle = peak_rss_mb(process.process.pid)  # type: ignore[union-attr]
                started = time.monotonic()
                for start in range(0, size, 5000):
                    chunk = ids[start : start + 5000]
                    produce(
                        broker.address, f"{prefix}.incoming", [(i.encode(), question(i, f"q {i}?"), []) for i in chunk]
                    )
                result = outcome(broker.address, prefix, ids, timeout=600)
                result |= {
                    "drain_s": round(time.monotonic() - started, 1),
                    "rss_idle_mb": round(idle, 1),
                    "rss_peak_mb": round(peak_rss_mb(process.process.pid), 1),  # type: ignore[union-attr]
                }
            finally:
                process.stop()
        rows.append(result)
    return rows


def outage(tmp: Path, *, seconds: float) -> dict[str, Any]:
    """Stop the broker for `seconds` and restart it on the same port (its storage is in memory: it comes back
    empty); does the worker reconnect by itself and categorize events sent after the restart?"""
    prefix = unique("r-outage")
    broker = EmbeddedBroker()
    broker.start()
    process = worker(broker.address, prefix, tmp).start()
    try:
        produce(broker.address, f"{prefix}.incoming", [(b"before", question("before", "q before?"), [])])
        before = outcome(broker.address, prefix, ["before"], timeout=60)
        broker.stop()
        time.sleep(seconds)
        alive_during = process.process.poll() is None  # type: ignore[union-attr]
        broker.start()
        ids = [f"o{i}" for i in range(50)]
        deadline = time.monotonic() + 120
        recovered = False
        while time.monotonic() < deadline and not recovered:
            produce(broker.address, f"{prefix}.incoming", [(i.encode(), question(i, f"q {i}?"), []) for i in ids])
            recovered = outcome(broker.address, prefix, ids, timeout=15)["lost"] == 0
        return {
            "outage_s": seconds,
            "before_lost": before["lost"],
            "worker_alive_during_outage": alive_during,
            "worker_alive_after": process.process.poll() is None,  # type: ignore[union-attr]
            "resumed_after_restart": recovered,
            "note": "memory storage: the restarted broker is empty (topics, offsets and groups are gone)",
        }
    finally:
        process.stop()
        broker.stop()


def fuzz(examples: int) -> dict[str, Any]:
    env = {**os.environ, "QCAT_FUZZ_EXAMPLES": str(examples)}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_fuzz.py"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return {
        "batches": examples,
        "passed": result.returncode == 0,
        "seconds": round(time.monotonic() - started, 1),
        "summary": result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-300:],
    }


def write_docs(report: dict[str, Any]) -> None:
    """Replace the figures table of docs/reliability.md (between its markers) with this run's."""
    c, g, o, a, f = (report[k] for k in ("crashes", "rebalances", "outage", "adapters", "fuzz"))
    x, r, s = (report[k] for k in ("outside_registry", "refused_records", "stalled_publish"))
    t, p, d = report["control_topic_recreated"], report["poison_header"], report["full_disk"]
    rows = [
        (
            f"SIGKILL x{c['kills']} while {c['events']:,} events flow",
            f"**{c['lost']} lost**, {c['duplicates']} duplicates",
            f"restarted each time; {c['dead_letters']} dead letters",
        ),
        (
            "consumer group of 2-3 workers: 3 joins, 1 leave, 1 kill, under load",
            f"**{g['lost']} lost**, {g['duplicates']} duplicates",
            f"{g['events']:,} events",
        ),
        *(
            (
                f"burst of {b['events']:,} events",
                f"**{b['lost']} lost**, {b['duplicates']} duplicates",
                f"drained in {b['drain_s']} s; RSS {b['rss_idle_mb']} MB idle, {b['rss_peak_mb']} MB peak",
            )
            for b in report["burst"]
        ),
        (
            f"broker stopped {o['outage_s']} s, restarted",
            f"worker alive: {o['worker_alive_after']}; resumed by itself: {o['resumed_after_restart']}",
            o["note"],
        ),
        (
            "5 broken adapters announced to a running worker",
            f"{sum(r['refused'] and r['still_serving'] for r in a.values())} of 5 refused, current adapter kept",
            ", ".join(case for case, r in a.items() if r["refused"] and r["still_serving"]),
        ),
        (
            f"{len(x)} adapters from outside the registry announced (working weights)",
            f"{sum(v['refused'] and v['still_serving'] for v in x.values())} of {len(x)} refused, current adapter kept",
            ", ".join(case for case, v in x.items() if v["refused"] and v["still_serving"]),
        ),
        (
            "broker restarted empty after an announcement, then a promotion",
            f"served: {t['served_after_restart']}",
            "the recreated control topic starts again at offset 0; the watcher reads it from its start (registry poll "
            "off)",
        ),
        (
            f"broker refuses records for good ({r['refused_dead_letters']} dead letters, {r['refused_outputs']} "
            f"outputs) amid {r['events']:,} events",
            f"**{r['lost']} lost**; refused outputs dead-lettered: {r['refused_outputs_dead_lettered']}; refused "
            f"dead letters on disk: {r['refused_dead_letters_on_disk']}",
            f"/readyz {r['ready_status']}; files {', '.join(r['disk_file_modes'])}; SIGTERM exit in {r['stop_s']} s",
        ),
        (
            f"broker frozen (SIGSTOP) mid-publish, stall bound {s['stall_timeout_s']} s",
            f"/readyz 503 after {s['not_ready_after_s']} s (check: {', '.join(s['failed_check'])}); 200 again "
            f"{s['ready_again_after_resume_s']} s after it resumes; **{s['lost']} lost**",
            f"SIGTERM with the broker frozen: exit in {s['stop_s_with_broker_frozen']} s "
            f"(stop_timeout {s['stop_timeout_s']} s)",
        ),
        (
            "a header key that is not UTF-8 (real producer) on the incoming, corrections and control topics; 2 "
            f"workers, {p['events']:,} events",
            f"**{p['lost']} lost**; dead-lettered: {', '.join(p['poison_dead_lettered'])}; announcements skipped: "
            f"{p['announcements_skipped']:.0f}",
            f"workers alive: {p['workers_alive']}; /readyz {p['ready_status']}",
        ),
        (
            f"the corrections store's disk full (file-size limit 0) while {d['corrections']:,} corrections arrive, "
            "then freed",
            f"worker alive: {d['worker_alive_while_full']}; /readyz {d['ready_status_while_full']} "
            f"(check: {', '.join(d['failed_check_while_full'])}); {d['store_failures']:.0f} failed attempts counted",
            f"all {d['stored']:,} stored {d['stored_after_room_s']} s after room came back, in {d['stored_lines']:,} "
            f"lines (none twice, none torn); /readyz {d['ready_status_after']} again",
        ),
        (
            "hostile input (hypothesis)",
            f"{f['batches']:,} batches: {'passed' if f['passed'] else 'FAILED'}",
            f["summary"],
        ),
        (
            "logs and endpoints of the crash run",
            f"secret in logs: {c['secret_in_logs']}; question text in logs: {c['question_text_in_logs']}",
            f"question text or ids in /metrics, /healthz, /readyz: {c['question_text_or_ids_in_endpoints']}",
        ),
    ]
    table = "| scenario | result | detail |\n|---|---|---|\n" + "\n".join(f"| {x} | {y} | {z} |" for x, y, z in rows)
    path = ROOT / "docs" / "reliability.md"
    head, _, rest = path.read_text().partition(FIGURES_START)
    _, _, tail = rest.partition(FIGURES_END)
    stamp = f"`{report['command']}` on {report['machine']}, {report['seconds']:.0f} s"
    if "rerun" in report:
        stamp += f"; then `--only {' '.join(report['rerun']['scenarios'])}` ({report['rerun']['seconds']:.0f} s)"
    path.write_text(f"{head}{FIGURES_START}\n{stamp}\n\n{table}\n{FIGURES_END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reliability.json")
    parser.add_argument("--only", nargs="+", default=None, help="re-run these scenarios, keep the others from --out")
    args = parser.parse_args()
    quick = args.quick
    tmp = Path("/tmp") / f"qcat-reliability-{time.time_ns()}"
    tmp.mkdir(parents=True)
    started = time.monotonic()
    report: dict[str, Any] = json.loads(args.out.read_text()) if args.only and args.out.exists() else {}
    report["command"] = "python bench/reliability.py" + (" --quick" if quick else "")
    report["machine"] = f"{os.cpu_count()} CPU cores"
    steps: dict[str, Callable[[], Any]] = {
        "crashes": lambda: crashes(tmp, kills=2 if quick else 5, events=3000 if quick else 10_000),
        "rebalances": lambda: rebalances(tmp, events=3000 if quick else 10_000),
        "burst": lambda: burst(tmp, sizes=[5000] if quick else [5000, 50_000]),
        "outage": lambda: outage(tmp, seconds=5 if quick else 30),
        "adapters": lambda: bad_adapters(tmp),
        "outside_registry": lambda: outside_registry(tmp / "outside-registry"),
        "control_topic_recreated": lambda: control_topic_recreated(tmp / "control-topic"),
        "refused_records": lambda: refused_records(tmp, events=300 if quick else 3000),
        "stalled_publish": lambda: stalled_publish(tmp, events=5000),
        "poison_header": lambda: poison_header(tmp, events=200 if quick else 2000),
        "full_disk": lambda: full_disk(tmp, corrections=100 if quick else 1000),
        "fuzz": lambda: fuzz(1000 if quick else 10_000),
    }
    for name, step in steps.items():
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        report[name] = step()
        print(json.dumps(report[name]), flush=True)
    if args.only:
        report["rerun"] = {"scenarios": args.only, "seconds": time.monotonic() - started}
    else:
        report["seconds"] = time.monotonic() - started
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if not quick:
        write_docs(report)
    lost = report["crashes"]["lost"] + report["rebalances"]["lost"] + sum(r["lost"] for r in report["burst"])
    print(f"wrote {args.out}")
    print(f"lost={lost} duplicates={report['crashes']['duplicates'] + report['rebalances']['duplicates']}")


if __name__ == "__main__":
    main()
