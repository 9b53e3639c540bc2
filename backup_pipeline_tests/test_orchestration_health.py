"""The table's health as the sensors report it: a failed run and the recovery that ends
it, and ticks that write an event only when something changed (Dagster keeps them all)."""

from __future__ import annotations

import time
from typing import Any

import dagster as dg
from dagster._core.test_utils import create_run_for_test

from backup_pipeline.backup.run import backup_topic
from backup_pipeline.demo.data import DemoRecord
from backup_pipeline.orchestration import check_memory, checks
from backup_pipeline.settings import load_settings
from backup_pipeline_tests.fix_kafka import good_records, key, produce
from backup_pipeline_tests.test_orchestration import (
    BEKREFTELSER,
    HENDELSER,
    env,
    materialize,
    tick,
)
from dev.harness.waits import wait_until

__all__ = ["env"]  # the fixture the tests below take, shared with test_orchestration


def test_a_failed_run_turns_the_runs_check_red_until_a_later_run_succeeds(env):
    instance = dg.DagsterInstance.ephemeral()
    create_run_for_test(
        instance, job_name="backup_bekreftelser", status=dg.DagsterRunStatus.FAILURE
    )
    assert check_memory.latest_failed_run(instance, BEKREFTELSER) is not None
    create_run_for_test(
        instance, job_name="backup_bekreftelser", status=dg.DagsterRunStatus.SUCCESS
    )
    assert check_memory.latest_failed_run(instance, BEKREFTELSER) is None


def record_events(instance: dg.DagsterInstance, result) -> list[Any]:
    """What the daemon does with a tick's asset events: store them, runless."""
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return list(result.asset_events)


def next_second(instance: dg.DagsterInstance, table: str) -> None:
    """Wait for the second after the table's latest materialization: the test instance
    (SQLite) stores a check result's time in whole seconds, and the UI's rule (a result
    newer than the materialization) would not hold for one written in the same second.
    PostgreSQL, which deployments use, keeps microseconds."""
    event = instance.get_latest_materialization_event(dg.AssetKey(table))
    assert event is not None
    wait_until(lambda: time.time() >= int(event.timestamp) + 1, 5, "the next second")


def runs_check(result) -> dg.AssetCheckEvaluation:
    (runs,) = [
        e
        for e in result.asset_events
        if isinstance(e, dg.AssetCheckEvaluation) and e.check_name == checks.RUNS
    ]
    return runs


def test_a_failed_run_stops_counting_once_records_are_stored_past_it(env, producer, topic_names):
    """Issue 17, point 4: recovery is shown by progress, not by a later run finishing (a
    follow run finishes only after BACKUP_RUN_FOLLOW_SECONDS)."""
    instance = dg.DagsterInstance.ephemeral()
    topic = topic_names[BEKREFTELSER.table]
    produce(producer, topic, good_records(BEKREFTELSER, 5))
    assert materialize(BEKREFTELSER.table, instance).success
    next_second(instance, BEKREFTELSER.table)
    failed = create_run_for_test(
        instance, job_name="backup_bekreftelser", status=dg.DagsterRunStatus.FAILURE
    )
    produce(producer, topic, good_records(BEKREFTELSER, 5, seed=2))

    # The failure lasts (nothing stored since): red at the first tick, and it stays red.
    result, context = tick("bekreftelser_backup_sensor", instance)
    assert not runs_check(result).passed, runs_check(result).description
    record_events(instance, result)
    result, context = tick("bekreftelser_backup_sensor", instance, context.cursor)
    # Still failing, so not written again (nothing changed), and still red in the UI.
    assert not any(
        isinstance(e, dg.AssetCheckEvaluation) and e.check_name == checks.RUNS
        for e in record_events(instance, result)
    )
    reported = checks.reported(instance, BEKREFTELSER)[checks.RUNS]
    assert reported is not None and reported.signature.startswith("False")
    assert check_memory.latest_failed_run(instance, BEKREFTELSER) is not None

    # A pass that has not ended as a run (a follow run goes on for minutes) stores records
    # past the failed run's end, and more records arrive: the failure no longer counts.
    backup_topic(load_settings(), BEKREFTELSER)
    produce(producer, topic, good_records(BEKREFTELSER, 3, seed=3))
    result, _ = tick("bekreftelser_backup_sensor", instance, context.cursor)
    runs = runs_check(result)
    assert runs.passed
    assert "records stored past its end" in str(runs.metadata["recovered"].value)
    assert runs.description and failed.run_id[:8] in runs.description
    latest = instance.get_run_records(dg.RunsFilter(job_name="backup_bekreftelser"), limit=1)
    assert latest[0].dagster_run.status == dg.DagsterRunStatus.FAILURE  # no run finished since


def test_a_tick_writes_events_only_when_something_changed(env, producer, topic_names):
    """Issue 17, point 1: the same state ticks after tick writes nothing; a quarantined
    record flips one check, and only that one is written."""
    instance = dg.DagsterInstance.ephemeral()
    topic = topic_names[HENDELSER.table]
    produce(producer, topic, good_records(HENDELSER, 4))
    assert materialize(HENDELSER.table, instance).success
    next_second(instance, HENDELSER.table)
    result, context = tick("bekreftelse_hendelser_backup_sensor", instance)
    written = record_events(instance, result)
    # The button's run reported the four checks for its materialization: only the
    # observations are new (lag as time, serving version).
    assert {type(e) for e in written} == {dg.AssetObservation}
    (table,) = [e for e in written if e.asset_key == dg.AssetKey(HENDELSER.table)]
    assert table.metadata["behind"].value == "0 s (under 1 min)"
    assert table.metadata["serving_version"].value == "v1"
    result, context = tick("bekreftelse_hendelser_backup_sensor", instance, context.cursor)
    assert record_events(instance, result) == []

    produce(producer, topic, [DemoRecord(key(1), None, [])])
    backup_topic(load_settings(), HENDELSER)
    result, context = tick("bekreftelse_hendelser_backup_sensor", instance, context.cursor)
    (flipped,) = record_events(instance, result)
    assert isinstance(flipped, dg.AssetCheckEvaluation)
    assert flipped.check_name == checks.QUARANTINE and not flipped.passed
    result, _ = tick("bekreftelse_hendelser_backup_sensor", instance, context.cursor)
    assert record_events(instance, result) == []
