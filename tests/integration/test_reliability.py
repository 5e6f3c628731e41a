"""The fast part of bench/reliability.py, in CI: crashes, rebalances, a burst, a broker outage and bad adapters,
each against its own embedded broker. The soak (`python bench/reliability.py`) runs the same code with larger counts."""

from __future__ import annotations

from pathlib import Path

from bench.reliability import bad_adapters, burst, crashes, outage, rebalances


def test_repeated_sigkill_loses_nothing_and_leaks_nothing(tmp_path: Path) -> None:
    result = crashes(tmp_path, kills=2, events=3000)
    assert result["lost"] == 0, result
    assert not result["secret_in_logs"]
    assert not result["question_text_in_logs"]
    assert not result["question_text_or_ids_in_endpoints"]


def test_members_joining_and_leaving_lose_nothing(tmp_path: Path) -> None:
    result = rebalances(tmp_path, events=3000)
    assert result["lost"] == 0, result


def test_a_burst_drains_with_bounded_memory(tmp_path: Path) -> None:
    [result] = burst(tmp_path, sizes=[5000])
    assert result["lost"] == 0, result
    assert result["rss_peak_mb"] < 4 * result["rss_idle_mb"], result


def test_the_worker_survives_a_broker_outage_and_resumes(tmp_path: Path) -> None:
    result = outage(tmp_path, seconds=5)
    assert result["worker_alive_after"], result
    assert result["resumed_after_restart"], result


def test_broken_adapters_are_refused_while_serving_goes_on(tmp_path: Path) -> None:
    results = bad_adapters(tmp_path)
    assert len(results) == 5
    assert all(r["refused"] and r["still_serving"] for r in results.values()), results
