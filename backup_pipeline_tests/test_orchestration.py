"""The Dagster shell against real Kafka and PostgreSQL: assets, checks and sensors."""

from __future__ import annotations

import threading
import time

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from backup_pipeline.definitions import defs
from backup_pipeline.demo.data import DemoRecord
from backup_pipeline.orchestration import check_memory, checks
from backup_pipeline.orchestration.jobs import TABLE_TAG, VERSION_TAG
from backup_pipeline.orchestration.resources import BackupEngine
from backup_pipeline.topics import TOPICS, spec_for_table
from backup_pipeline_tests.fix_db import stored_offsets
from backup_pipeline_tests.fix_kafka import good_records, key, produce
from dev.harness.db import hwms
from dev.harness.waits import bounded, wait_until

BEKREFTELSER = spec_for_table("bekreftelser")
HENDELSER = spec_for_table("bekreftelse_hendelser")


@pytest.fixture
def env(monkeypatch, services, database_url, topic_names):
    monkeypatch.setenv("KAFKA_BROKERS", services["KAFKA_BROKERS"])
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.delenv("BACKUP_VERSION", raising=False)
    for spec in TOPICS:
        monkeypatch.setenv(spec.topic_env_var, topic_names[spec.table])
    return monkeypatch


def table_asset(table: str) -> dg.AssetsDefinition:
    return defs.get_assets_def(table)


def table_checks(table: str) -> dg.AssetChecksDefinition:
    return next(
        c
        for c in defs.asset_checks or []
        if isinstance(c, dg.AssetChecksDefinition)
        and {k.asset_key for k in c.check_keys} == {dg.AssetKey(table)}
    )


def materialize(table: str, instance: dg.DagsterInstance, run_config=None):
    """What the Materialize button does: the asset and its checks."""
    return dg.materialize(
        [table_asset(table), table_checks(table)],
        selection=dg.AssetSelection.assets(table) | dg.AssetSelection.checks_for_assets(table),
        instance=instance,
        resources={"engine": BackupEngine()},
        run_config=run_config,
    )


def checks_by_name(evaluations) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in evaluations}


def test_the_materialize_button_backs_up_the_serving_version_and_settles_every_check(
    env, producer, topic_names, db
):
    instance = dg.DagsterInstance.ephemeral()
    for spec in TOPICS:
        produce(producer, topic_names[spec.table], good_records(spec, 25))
        result = materialize(spec.table, instance)
        assert result.success
        (mat,) = result.asset_materializations_for_node(spec.table)
        meta = mat.metadata
        assert meta["dagster/row_count"].value == 25
        assert meta["rows_written"].value == 25
        assert meta["serving_version"].value == "v1"
        assert "last_record_at" in meta and "hwms" in meta
        # Counts that are nearly always 0 are shown only when they happen.
        assert "quarantined" not in meta and "records_lost" not in meta
        evaluations = checks_by_name(result.get_asset_check_evaluations())
        assert set(evaluations) == set(checks.CHECKS)
        assert all(c.passed for c in evaluations.values()), evaluations
        run = instance.get_run_by_id(result.run_id)
        assert run is not None
        assert run.tags[TABLE_TAG] == spec.table and run.tags[VERSION_TAG] == "1"
        assert db.execute(f"SELECT count(*) FROM {spec.table}_current").fetchone()[0] == 25


def test_quarantine_fails_its_check_until_acknowledged(env, producer, topic_names, db):
    topic = topic_names[HENDELSER.table]
    produce(producer, topic, [*good_records(HENDELSER, 3), DemoRecord(key(1), None, [])])
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(HENDELSER.table, instance)
    quarantine = checks_by_name(result.get_asset_check_evaluations())[checks.QUARANTINE]
    assert not quarantine.passed and quarantine.severity == dg.AssetCheckSeverity.WARN
    assert quarantine.metadata["unacknowledged"].value == 1
    assert "backup_quarantine" in str(quarantine.metadata["where_to_look"].value)

    # From the UI: the acknowledge job, configured in the Launchpad.
    job = defs.resolve_job_def("acknowledge_job")
    config = {"table": HENDELSER.table, "what": "quarantine", "by": "ops", "note": "reviewed"}
    assert job.execute_in_process(
        instance=instance, run_config={"ops": {"acknowledge_rows": {"config": config}}}
    ).success
    result = materialize(HENDELSER.table, instance)
    assert checks_by_name(result.get_asset_check_evaluations())[checks.QUARANTINE].passed
    # Acknowledged, not deleted.
    assert db.execute(
        "SELECT count(*), min(acknowledged_by), min(acknowledged_note) FROM backup_quarantine"
    ).fetchone() == (1, "ops", "reviewed")


def sensor(name: str) -> dg.SensorDefinition:
    return defs.resolve_sensor_def(name)


def tick(name: str, instance: dg.DagsterInstance, cursor: str | None = None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"engine": BackupEngine()}, definitions=defs
    )
    return sensor(name)(context), context


def test_the_backup_sensor_keeps_one_follow_run_and_reports_lag_and_settled_checks(
    env, producer, topic_names
):
    instance = dg.DagsterInstance.ephemeral()
    produce(producer, topic_names[BEKREFTELSER.table], good_records(BEKREFTELSER, 12))
    result, context = tick("bekreftelser_backup_sensor", instance)
    (request,) = result.run_requests
    assert request.tags == {TABLE_TAG: "bekreftelser", VERSION_TAG: "1"}
    config = request.run_config["ops"]["bekreftelser"]["config"]
    assert config["version"] == 1 and config["follow_seconds"] >= 600
    table_events = [e for e in result.asset_events if e.asset_key == dg.AssetKey("bekreftelser")]
    observation = next(e for e in table_events if isinstance(e, dg.AssetObservation))
    assert observation.metadata["lag"].value == 12
    assert observation.metadata["serving_version"].value == "v1"
    evaluations = checks_by_name(e for e in table_events if isinstance(e, dg.AssetCheckEvaluation))
    assert set(evaluations) == set(checks.CHECKS)
    # Lag of 12 is within BACKUP_CAUGHT_UP_MAX_LAG: nothing to act on.
    assert all(e.passed for e in evaluations.values())

    # A follow run is active (and young): the tick starts nothing.
    create_run_for_test(
        instance,
        job_name="backup_bekreftelser",
        status=dg.DagsterRunStatus.STARTED,
        tags={VERSION_TAG: "1"},
    )
    result, _ = tick("bekreftelser_backup_sensor", instance, context.cursor)
    assert not result.run_requests
    assert "follows bekreftelser v1" in result.skip_reason.skip_message


def test_lag_fails_its_check_only_after_staying_high(env, producer, topic_names):
    env.setenv("BACKUP_CAUGHT_UP_MAX_LAG", "5")
    env.setenv("BACKUP_LAG_ALERT_SECONDS", "2")
    instance = dg.DagsterInstance.ephemeral()
    produce(producer, topic_names[BEKREFTELSER.table], good_records(BEKREFTELSER, 12))

    def lag_check(cursor: str | None):
        result, context = tick("bekreftelser_backup_sensor", instance, cursor)
        (lag,) = [
            e
            for e in result.asset_events
            if isinstance(e, dg.AssetCheckEvaluation) and e.check_name == checks.LAG
        ]
        return lag, context.cursor

    lag, cursor = lag_check(None)
    assert lag.passed  # above the threshold, but only just now
    time.sleep(2.5)  # the alert time is the behaviour under test
    lag, cursor = lag_check(cursor)
    assert not lag.passed and lag.metadata["lag"].value == 12


def test_a_tick_skips_with_a_reason_when_postgresql_is_unreachable(env):
    env.setenv("DATABASE_URL", "postgresql://backup:secret-pw@127.0.0.1:1/backup")
    result, _ = tick("bekreftelser_backup_sensor", dg.DagsterInstance.ephemeral())
    assert isinstance(result, dg.SkipReason) and result.skip_message is not None
    assert "cannot look at Kafka or PostgreSQL" in result.skip_message
    assert "secret-pw" not in result.skip_message


def test_a_follow_run_materializes_while_it_runs_and_hands_over_to_the_button(
    env, producer, topic_names, db
):
    env.setenv("BACKUP_MATERIALIZE_EVERY_SECONDS", "1")
    topic = topic_names[BEKREFTELSER.table]
    produce(producer, topic, good_records(BEKREFTELSER, 6))
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("backup_bekreftelser")
    results: list[dg.ExecuteInProcessResult] = []
    follower = threading.Thread(
        target=lambda: results.append(
            job.execute_in_process(
                instance=instance,
                run_config={"ops": {"bekreftelser": {"config": {"follow_seconds": 300}}}},
            )
        ),
        daemon=True,
    )
    follower.start()
    wait_until(
        lambda: len(stored_offsets(db, "bekreftelser")) >= 6, 120, "the follower's first rows"
    )
    produce(producer, topic, good_records(BEKREFTELSER, 4, seed=2))
    button = materialize("bekreftelser", instance)  # waits for the follower to hand over
    follower.join(bounded(120))
    assert not follower.is_alive()
    (followed,) = results
    assert followed.success and button.success
    mats = followed.asset_materializations_for_node("bekreftelser")
    mats += button.asset_materializations_for_node("bekreftelser")
    assert sum(m.metadata["rows_written"].value for m in mats) == 10
    assert sum(h + 1 for h in hwms(db, topic).values()) == 10


def test_a_new_version_is_reingested_by_its_own_sensor_then_serves(env, producer, topic_names, db):
    instance = dg.DagsterInstance.ephemeral()
    topic = topic_names[HENDELSER.table]
    produce(producer, topic, good_records(HENDELSER, 30))
    assert materialize(HENDELSER.table, instance).success
    v1_rows = db.execute(
        "SELECT * FROM bekreftelse_hendelser WHERE version = 1 ORDER BY 2, 3"
    ).fetchall()
    result, _ = tick("bekreftelse_hendelser_reingest_sensor", instance)
    assert "nothing to re-ingest" in result.skip_message

    env.setenv("BACKUP_VERSION", "2")
    env.setenv("BACKUP_CAUGHT_UP_MAX_LAG", "0")
    result, cursor_ctx = tick("bekreftelse_hendelser_backup_sensor", instance, '{"serving": 1}')
    # The serving version keeps being followed while version 2 is re-ingested.
    assert [r.tags[VERSION_TAG] for r in result.run_requests] == ["1"]
    progress = next(
        e
        for e in result.asset_events
        if e.asset_key == dg.AssetKey(HENDELSER.table) and isinstance(e, dg.AssetObservation)
    )
    assert progress.metadata["reingest_version"].value == "v2"
    assert progress.metadata["reingest_percent"].value == 0.0
    result, _ = tick("bekreftelse_hendelser_reingest_sensor", instance)
    (request,) = result.run_requests
    assert request.tags[VERSION_TAG] == "2"

    reingest = dg.materialize(
        [table_asset(HENDELSER.table)],
        instance=instance,
        resources={"engine": BackupEngine()},
        run_config={"ops": {HENDELSER.table: {"config": {"version": 2}}}},
    )
    assert reingest.success
    # A version that does not serve yet reports observations, not materializations.
    assert not reingest.asset_materializations_for_node(HENDELSER.table)
    result, _ = tick("bekreftelse_hendelser_backup_sensor", instance, cursor_ctx.cursor)
    assert "switched from version 1 to version 2" in " ".join(
        [result.skip_reason.skip_message if result.skip_reason else ""]
        + [str(e.metadata) for e in result.asset_events]
    ) or [r.tags[VERSION_TAG] for r in result.run_requests] == ["2"]
    assert db.execute(
        "SELECT version FROM backup_versions WHERE table_name = %s AND state = 'serving'",
        (HENDELSER.table,),
    ).fetchone() == (2,)
    assert (
        db.execute("SELECT * FROM bekreftelse_hendelser WHERE version = 1 ORDER BY 2, 3").fetchall()
        == v1_rows
    )
    assert db.execute("SELECT count(*) FROM bekreftelse_hendelser_current").fetchone()[0] == 30


def test_a_failed_run_is_tagged_with_the_run_that_retried_it(env):
    instance = dg.DagsterInstance.ephemeral()
    failed = create_run_for_test(
        instance, job_name="backup_bekreftelser", status=dg.DagsterRunStatus.FAILURE
    )
    retry = create_run_for_test(
        instance,
        job_name="backup_bekreftelser",
        status=dg.DagsterRunStatus.STARTED,
        tags={"dagster/parent_run_id": failed.run_id},
    )
    check_memory.mark_retried(instance, BEKREFTELSER)
    tagged = instance.get_run_by_id(failed.run_id)
    assert tagged is not None and tagged.tags[check_memory.RETRIED_BY_TAG] == retry.run_id


def test_reingestion_progress_moves_with_an_eta_while_it_runs(env, producer, topic_names):
    instance = dg.DagsterInstance.ephemeral()
    produce(producer, topic_names[BEKREFTELSER.table], good_records(BEKREFTELSER, 40))
    assert materialize(BEKREFTELSER.table, instance).success
    env.setenv("BACKUP_VERSION", "2")
    env.setenv("BACKUP_CAUGHT_UP_MAX_LAG", "0")

    def progress(cursor: str | None):
        result, context = tick("bekreftelser_backup_sensor", instance, cursor)
        (observation,) = [
            e
            for e in result.asset_events
            if e.asset_key == dg.AssetKey("bekreftelser") and isinstance(e, dg.AssetObservation)
        ]
        return observation.metadata, context.cursor

    before, cursor = progress(None)
    assert before["reingest_percent"].value == 0.0
    assert "0 of 40 records" in before["reingest_progress"].value
    # A capped pass of the re-ingestion (as its run does pass by pass).
    config = {"ops": {"bekreftelser": {"config": {"version": 2, "max_records": 10}}}}
    assert dg.materialize(
        [table_asset("bekreftelser")],
        instance=instance,
        resources={"engine": BackupEngine()},
        run_config=config,
    ).success
    after, _ = progress(cursor)
    assert 0 < after["reingest_percent"].value < 100
    assert "ETA" in after["reingest_progress"].value
    assert "unknown" not in after["reingest_progress"].value


@pytest.mark.parametrize("spec", TOPICS, ids=lambda spec: spec.table)
def test_each_table_assets_column_schema_is_the_migrated_tables_columns(spec, db):
    schema = (
        table_asset(spec.table)
        .specs_by_key[dg.AssetKey(spec.table)]
        .metadata["dagster/column_schema"]
    )
    # PostgreSQL itself reads the types Dagster shows (smallint, varchar, ...).
    shown = {
        column.name: db.execute("SELECT %s::regtype::text", (column.type,)).fetchone()[0]
        for column in schema.columns
    }
    migrated = dict(
        db.execute(
            "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (spec.table,),
        ).fetchall()
    )
    assert shown == migrated
    assert all(column.description for column in schema.columns)
