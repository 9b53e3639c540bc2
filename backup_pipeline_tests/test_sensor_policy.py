"""The sensors' and checks' rules as pure functions: no Kafka, PostgreSQL or Dagster
instance, milliseconds per test. What the real services show is in test_orchestration.py."""

from __future__ import annotations

from typing import Any

import dagster as dg

from backup_pipeline.acknowledge import Unacknowledged
from backup_pipeline.orchestration import check_memory, checks, reporting
from backup_pipeline.orchestration.reporting import Reported
from backup_pipeline.orchestration.resources import TopicView
from backup_pipeline.orchestration.sensors import (
    ActiveRun,
    Cursor,
    follow_decision,
    observe,
    sensor_interval,
)
from backup_pipeline.settings import load_settings
from backup_pipeline.status import PartitionStatus
from backup_pipeline.topics import spec_for_table
from backup_pipeline.versions import VersionState

SPEC = spec_for_table("bekreftelser")
SETTINGS = load_settings({"KAFKA_BROKERS": "127.0.0.1:9092", "BACKUP_CAUGHT_UP_MAX_LAG": "10"})


def view(
    lag: int = 0,
    *,
    serving: int = 1,
    target: int = 1,
    done: int = 0,
    total: int = 0,
    quarantined: int = 0,
    lost: int = 0,
) -> TopicView:
    state = VersionState("t", target, serving, 0, total, done, lag)
    partition = PartitionStatus("bekreftelser", "t", serving, 0, 99 - lag, 0, 100, 0, 0)
    return TopicView(state, [partition], Unacknowledged(quarantined, lost, None, None))


# ------------------------------------------------------------- follow runs ----


def test_no_active_run_starts_one() -> None:
    start, why = follow_decision([], 600, "t v1")
    assert start and "starting one" in why


def test_a_young_follow_run_is_left_alone() -> None:
    start, why = follow_decision([ActiveRun("abcdef1234", 30)], 600, "t v1")
    assert not start and "abcdef12 follows t v1" in why


def test_a_run_that_followed_its_time_gets_a_successor() -> None:
    start, why = follow_decision([ActiveRun("abcdef1234", 601)], 600, "t v1")
    assert start and "successor" in why


def test_while_a_successor_takes_over_nothing_more_starts() -> None:
    active = [ActiveRun("old", 650), ActiveRun("new", 5)]
    start, why = follow_decision(active, 600, "t v1")
    assert not start and "new" in why


# ------------------------------------------------------------------ checks ----


def health(view_: TopicView, high_for: float | None = None) -> checks.Health:
    return checks.Health(
        view=view_,
        max_lag=10,
        lag_alert_seconds=300,
        lag_high_for_seconds=high_for,
        failed_run=None,
    )


def outcomes(health_: checks.Health) -> dict[str, checks.Outcome]:
    return {o.name: o for o in checks.judge(SPEC, health_)}


def test_a_healthy_table_passes_every_check_without_flat_series() -> None:
    judged = outcomes(health(view()))
    assert all(o.passed for o in judged.values())
    # Zero counts are text ("none"), so the check pages plot no flat lines of zeros.
    assert isinstance(judged[checks.QUARANTINE].metadata["unacknowledged"], dg.MetadataValue)
    assert judged[checks.LAG].metadata["lag"] == 0


def test_lag_fails_only_after_staying_high_for_the_alert_time() -> None:
    assert outcomes(health(view(50), high_for=299))[checks.LAG].passed
    failed = outcomes(health(view(50), high_for=300))[checks.LAG]
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR


def test_unacknowledged_quarantine_warns_and_gaps_fail() -> None:
    judged = outcomes(health(view(quarantined=2, lost=5)))
    assert not judged[checks.QUARANTINE].passed
    assert judged[checks.QUARANTINE].severity == dg.AssetCheckSeverity.WARN
    assert judged[checks.QUARANTINE].metadata["unacknowledged"] == 2
    assert not judged[checks.GAPS].passed
    assert judged[checks.GAPS].severity == dg.AssetCheckSeverity.ERROR


def test_a_failed_run_fails_the_runs_check_with_its_error() -> None:
    failed = checks.Health(
        view(), 10, 300, None, check_memory.FailedRun("r1", "offsets not accounted")
    )
    judged = outcomes(failed)[checks.RUNS]
    assert not judged.passed and judged.metadata["error"] == "offsets not accounted"


# -------------------------------------------------------------- observations ----


def table_observation(events: list[Any]) -> dict[str, Any]:
    (observation,) = [
        e
        for e in events
        if isinstance(e, dg.AssetObservation) and e.asset_key == dg.AssetKey("bekreftelser")
    ]
    return {k: getattr(v, "value", v) for k, v in observation.metadata.items()}


def test_a_tick_reports_lag_and_the_serving_version() -> None:
    events, reasons = observe(SPEC, view(7), Cursor(), SETTINGS, now=1000.0)
    meta = table_observation(events)
    assert meta["lag"] == 7 and meta["serving_version"] == "v1"
    assert "reingest_percent" not in meta and not reasons


def test_reingestion_progress_gets_a_rate_and_an_eta_from_two_ticks() -> None:
    cursor = Cursor(serving=1)
    first, _ = observe(SPEC, view(target=2, done=0, total=1000), cursor, SETTINGS, now=1000.0)
    assert "ETA unknown yet" in table_observation(first)["reingest_progress"]
    later, reasons = observe(
        SPEC, view(target=2, done=500, total=1000), cursor, SETTINGS, now=1100.0
    )
    meta = table_observation(later)
    # 500 records in 100 s: 500 more take 100 s, about 2 minutes rounded.
    assert meta["reingest_percent"] == 50.0
    assert "500 of 1,000 records; ETA 2 min" in meta["reingest_progress"]
    assert any("re-ingesting version 2" in r for r in reasons)


def test_a_switch_of_the_serving_version_is_said_once() -> None:
    cursor = Cursor(serving=1)
    _, reasons = observe(SPEC, view(serving=2, target=2), cursor, SETTINGS, now=1.0)
    assert reasons == ["switched from version 1 to version 2"]
    _, reasons = observe(SPEC, view(serving=2, target=2), cursor, SETTINGS, now=2.0)
    assert reasons == []


def test_cursors_with_unknown_fields_and_garbage_are_read_safely() -> None:
    assert Cursor.parse('{"serving": 2, "lag_high_since": 5}').serving == 2
    assert Cursor.parse("not json").serving is None
    assert Cursor.parse("1") == Cursor()  # not an object
    assert Cursor.parse(None) == Cursor()


def test_the_cursor_round_trips_what_it_reported() -> None:
    cursor = Cursor(serving=1, marks={"0": [100.0, 5.0]}, observed="x", observed_at=9.0)
    assert Cursor.parse(cursor.dump()) == cursor
    assert " " not in cursor.dump()  # compact: it is stored on every tick


# ------------------------------------------------------- report on change ----


def test_an_unchanged_tick_writes_no_observation_until_the_heartbeat() -> None:
    cursor = Cursor()
    first, _ = observe(SPEC, view(7), cursor, SETTINGS, now=1000.0)
    assert len(first) == 2  # the topic's and the table's
    same, _ = observe(SPEC, view(9), cursor, SETTINGS, now=1030.0)
    assert same == []  # lag in records moved, the time band did not
    beat = SETTINGS.backup_health_heartbeat_seconds
    assert observe(SPEC, view(9), cursor, SETTINGS, now=1000.0 + beat)[0]


def test_the_lag_band_and_whole_reingest_percents_are_worth_an_observation() -> None:
    cursor = Cursor()
    observe(SPEC, view(7), cursor, SETTINGS, now=1000.0, behind=3)
    assert observe(SPEC, view(7), cursor, SETTINGS, now=1030.0, behind=400)[0]
    observe(SPEC, view(target=2, done=100, total=1000), cursor, SETTINGS, now=1060.0)
    assert not observe(SPEC, view(target=2, done=105, total=1000), cursor, SETTINGS, 1090.0)[0]
    assert observe(SPEC, view(target=2, done=110, total=1000), cursor, SETTINGS, 1120.0)[0]


def test_time_behind_stays_under_a_tick_while_the_backup_keeps_up() -> None:
    marks: dict[str, list[float]] = {}

    def at(hwm: int, end: int, now: float) -> float:
        part = PartitionStatus("bekreftelser", "t", 1, 0, hwm, 0, end, 0, 0)
        return reporting.behind_seconds(marks, [part], now)

    # Steady traffic: every tick finds the previous tick's records stored.
    assert at(hwm=8, end=20, now=0.0) == 0.0
    assert at(hwm=25, end=40, now=30.0) == 0.0
    # The backup stalls at 25: the records seen at t=30 wait longer and longer.
    assert at(hwm=25, end=60, now=60.0) == 30.0
    assert at(hwm=25, end=80, now=3630.0) == 3600.0
    assert reporting.behind_band(3600.0) == "30 min-2 h"
    # Caught up: nothing waits.
    assert at(hwm=79, end=80, now=3660.0) == 0.0 and marks == {}


def test_a_check_is_written_when_it_flips_goes_stale_or_misses_the_materialization() -> None:
    now, beat = 10_000.0, 1800.0
    same = Reported("True|ERROR|under 1 min", now - 60, True)
    assert reporting.checks_due({"lag": "True|ERROR|under 1 min"}, {"lag": same}, now, beat) == []
    flipped = {"lag": "False|ERROR|under 1 min"}
    assert reporting.checks_due(flipped, {"lag": same}, now, beat) == ["lag"]
    band = {"lag": "True|ERROR|1-5 min"}
    assert reporting.checks_due(band, {"lag": same}, now, beat) == ["lag"]
    old = Reported("True|ERROR|under 1 min", now - beat, True)
    assert reporting.checks_due({"lag": same.signature}, {"lag": old}, now, beat) == ["lag"]
    before_mat = Reported("True|ERROR|under 1 min", now - 5, False)
    assert reporting.checks_due({"lag": same.signature}, {"lag": before_mat}, now, beat) == ["lag"]
    assert reporting.checks_due({"lag": same.signature}, {"lag": None}, now, beat) == ["lag"]


def test_the_lag_check_says_how_far_behind_as_time_and_which_version_serves() -> None:
    lag = outcomes(checks.Health(view(3), 10, 300, None, None, behind_seconds=125.0))[checks.LAG]
    assert lag.description.startswith("v1 serves; 2 min behind (1-5 min)")
    assert lag.signature == "True|ERROR|1-5 min"


def test_a_recovered_failed_run_passes_and_says_why() -> None:
    recovered = check_memory.FailedRun("r1", "boom", recovered="the topic is caught up")
    judged = outcomes(checks.Health(view(), 10, 300, None, recovered))[checks.RUNS]
    assert judged.passed and "since recovered: the topic is caught up" in judged.description


# ------------------------------------------------------------ the interval ----


def test_the_sensor_interval_survives_another_variable_being_missing_or_bad() -> None:
    # No KAFKA_BROKERS and a bad BACKUP_VERSION: the interval is read alone (issue 20, 4).
    assert sensor_interval({"BACKUP_SENSOR_INTERVAL_SECONDS": "45", "BACKUP_VERSION": "x"}) == 45
    assert sensor_interval({"BACKUP_SENSOR_INTERVAL_SECONDS": "1"}) == 30  # below 5: default
    assert sensor_interval({}) == 30
