"""The fast part of bench/reliability.py, in CI: crashes, rebalances, a burst, a broker outage and bad adapters,
each against its own embedded broker. The soak (`python bench/reliability.py`) runs the same code with larger counts."""

from __future__ import annotations

from pathlib import Path

from bench.announcements import bad_adapters, control_topic_recreated, outside_registry, registry_serving_v1
from bench.disk import full_disk
from bench.poison import poison_header
from bench.refusals import refused_records, stalled_publish
from bench.reliability import burst, crashes, outage, rebalances


def test_repeated_sigkill_loses_nothing_and_leaks_nothing(tmp_path: Path) -> None:
    result = crashes(tmp_path, kills=2, events=3000)
    assert result["lost"] == 0, result
    assert not result["secret_in_logs"]
    assert not result["question_text_in_logs"]
    assert not result["question_text_or_ids_in_endpoints"]


def test_members_joining_and_leaving_lose_nothing(tmp_path: Path) -> None:
    result = rebalances(tmp_path, events=2000, seconds=25)
    assert result["lost"] == 0, result


def test_a_burst_drains_with_bounded_memory(tmp_path: Path) -> None:
    [result] = burst(tmp_path, sizes=[5000])
    assert result["lost"] == 0, result
    assert result["rss_peak_mb"] < 4 * result["rss_idle_mb"], result


def test_the_worker_survives_a_broker_outage_and_resumes(tmp_path: Path) -> None:
    result = outage(tmp_path, seconds=5)
    assert result["worker_alive_after"], result
    assert result["resumed_after_restart"], result


def test_broken_adapters_and_adapters_from_outside_the_registry_are_refused(tmp_path: Path) -> None:
    """Five broken versions are refused when loaded; four working adapters that did not come from the registry's
    current version (a path as version, an unregistered version with a path, a registered one never promoted, a
    version folder linking outside) are refused before loading; the worker serves v1 throughout."""
    served = registry_serving_v1(tmp_path)
    broken = bad_adapters(tmp_path, served)
    assert len(broken) == 5
    assert all(r["refused"] and r["still_serving"] for r in broken.values()), broken
    outside = outside_registry(tmp_path / "outside", served)
    assert len(outside) == 4
    assert all(r["refused"] and r["still_serving"] for r in outside.values()), outside


def test_a_promotion_reaches_a_worker_whose_control_topic_was_recreated(tmp_path: Path) -> None:
    """After the broker restarts empty, the recreated control topic is behind the worker's position; the next
    promotion is served anyway, by its announcement (the registry poll is off): the watcher reads the topic again."""
    result = control_topic_recreated(tmp_path)
    assert result["served_after_restart"], result


def test_records_the_broker_refuses_are_set_aside_and_the_stream_goes_on(tmp_path: Path) -> None:
    """A refused output becomes its input's dead letter, with no route record published for it; a refused dead
    letter goes to disk (0600); every good event sharing their record batches is categorized and routed, readiness
    stays green, and SIGTERM ends the worker promptly."""
    result = refused_records(tmp_path, events=300)
    assert result["lost"] == 0, result
    assert result["refused_outputs_dead_lettered"] == result["refused_outputs"] > 0, result
    assert result["refused_outputs_routed"] == 0, result  # a route record only after its categorized one is in
    assert result["good_routed"] == result["events"], result
    assert result["accepted_dead_letters"] == result["refused_dead_letters"], result
    assert result["refused_dead_letters_on_disk"] == result["refused_dead_letters"] > 0, result
    assert result["disk_file_modes"] == ["0o600"], result
    assert result["metric_written_to_disk"] == result["refused_dead_letters"], result
    assert result["metric_dead_lettered"] == result["refused_outputs"], result
    assert result["ready_status"] == 200, result
    assert result["stop_s"] < 20, result


def test_a_stalled_publish_fails_readiness_and_a_stop_keeps_its_deadline(tmp_path: Path) -> None:
    """A frozen broker turns /readyz to 503 (the publishing check) once a publish waits past its bound, with the
    gauge and a log line; readiness recovers when the broker does, nothing is lost, and with the broker frozen again
    SIGTERM still ends the worker by `stop_timeout`."""
    result = stalled_publish(tmp_path, events=5000, stall_timeout=2, stop_timeout=5)
    assert result["not_ready_after_s"] is not None, result
    assert result["failed_check"] == ["publishing"], result
    assert result["stalled_gauge_s"] >= 2, result
    assert result["stall_logged"], result
    assert result["ready_again_after_resume_s"] is not None, result
    assert result["lost"] == 0, result
    assert result["stop_s_with_broker_frozen"] < 10, result


def test_a_record_whose_header_key_is_not_utf8_is_dead_lettered_and_the_group_goes_on(tmp_path: Path) -> None:
    """A real producer writes a header key that is not UTF-8 to the incoming, corrections and control topics, with
    two workers in one group: the records are dead-lettered with their raw bytes (the announcement skipped and
    counted), every good event is categorized, and both workers stay alive and ready."""
    result = poison_header(tmp_path, events=40)
    assert result["lost"] == 0, result
    assert result["poison_dead_lettered"] == ["corrections:unparseable_record", "incoming:unparseable_record"], result
    assert result["poison_payloads_base64"], result
    assert not result["poison_categorized"], result
    assert result["announcements_skipped"] == 2, result
    assert result["workers_alive"] == [True, True], result
    assert result["ready_status"] == [200, 200], result


def test_a_full_disk_under_the_corrections_store_fails_readiness_and_loses_nothing(tmp_path: Path) -> None:
    """Every write fails with ENOSPC: the worker lives on, retries, counts the failures and is not ready
    (`storing_corrections`); once there is room every correction is stored once, with no torn line."""
    result = full_disk(tmp_path, corrections=100)
    assert result["worker_alive_while_full"], result
    assert result["store_failures"] >= 1, result
    assert result["ready_status_while_full"] == 503, result
    assert result["failed_check_while_full"] == ["storing_corrections"], result
    assert result["stored"] == result["stored_lines"] == 100, result
    assert result["ready_status_after"] == 200, result
    assert result["file_modes"] == ["0o600"], result
