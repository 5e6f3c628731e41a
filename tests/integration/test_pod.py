"""One pod: `qcat worker` with an engine core and front-end processes (QCAT_FRONTENDS), on the real broker with the
built-in model: every event categorized once, the pod's metrics by front-end, a hot swap that moves every front-end,
and the death of any part ends the pod (so that it restarts) while SIGTERM stops every process."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from qcat.pytorch.model import LoadedModel
from qcat.registry import Registry
from qcat.schemas.taxonomy import Taxonomy
from qcat.worker.supervisor import PART_DIED
from tests.helpers.adapters import untrained_adapter
from tests.integration.kafka import WorkerProcess, categorized_ids, consume, produce, question, run_qcat, unique

TAXONOMY = Taxonomy.from_names(["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"])


def ask(broker: str, prefix: str, ids: list[str]) -> None:
    produce(broker, f"{prefix}.incoming", [(i.encode(), question(i, f"Who is {i} ?"), []) for i in ids])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_pod_categorizes_every_event_once_and_swaps_every_front_end(
    broker: str, tmp_path: Path, fresh_tiny: Callable[[], LoadedModel]
) -> None:
    """Two front-ends share one core: 400 events each categorized once, both front-ends at work; a promotion
    announced once moves both; SIGTERM leaves no process behind."""
    registry = Registry(tmp_path / "registry")
    for version in ("v1", "v2"):
        registry.add(untrained_adapter(fresh_tiny(), TAXONOMY, version, tmp_path / version))
    registry.promote("v1", force=True)
    prefix = unique("t-pod")
    pod = WorkerProcess(broker, prefix, tmp_path, frontends=2, registry=registry.url).start()
    try:
        parts = json.loads(pod.get("/healthz"))
        ask(broker, prefix, [f"a{i}" for i in range(400)])
        ids = categorized_ids(broker, prefix, 400, timeout=120)
        assert len(set(ids)) == 400
        counts = [line for line in pod.get("/metrics").splitlines() if line.startswith("qcat_events_in_total")]
        assert {'frontend="0"' in line for line in counts} == {True, False}  # both front-ends consumed
        env = {**os.environ, "QCAT_BROKERS": broker, "QCAT_TOPIC_PREFIX": prefix}
        promoted = run_qcat(env, "adapters", "promote", "v2", "--registry", registry.url, "--force", "--announce")
        assert promoted.returncode == 0, promoted.stderr[-2000:]
        for index in range(2):
            pod.wait_for_metric(f'qcat_adapter_swaps_total{{frontend="{index}",result="swapped"}}', 1)
        ask(broker, prefix, [f"b{i}" for i in range(100)])
        topic = f"{prefix}.categorized"
        after = consume(
            broker, [topic], lambda c: {f"b{i}" for i in range(100)} <= {e["event_id"] for e in c.values(topic)}
        )
        assert {e["adapter_version"] for e in after.values(topic) if e["event_id"].startswith("b")} == {"v2"}
    finally:
        pod.stop()
    assert not any(alive(pid) for pid in [parts["core_pid"], *parts["frontend_pids"]])


@pytest.mark.parametrize("part", ["core", "front-end"])
def test_the_death_of_any_part_ends_the_pod(broker: str, tmp_path: Path, part: str) -> None:
    """SIGKILL to the core or to a front-end: the pod exits with PART_DIED and leaves no process behind."""
    pod = WorkerProcess(broker, unique("t-pod-death"), tmp_path, frontends=2).start()
    parts = json.loads(pod.get("/healthz"))
    victim = parts["core_pid"] if part == "core" else parts["frontend_pids"][1]
    os.kill(victim, signal.SIGKILL)
    assert pod.process is not None
    assert pod.process.wait(timeout=60) == PART_DIED
    assert not any(alive(pid) for pid in [parts["core_pid"], *parts["frontend_pids"]])
