"""The Dagster shell against real Kafka and PostgreSQL: assets, checks and sensors."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from backup_pipeline.definitions import defs
from backup_pipeline.demo_data import DemoRecord
from backup_pipeline.orchestration import assets as asset_defs
from backup_pipeline.orchestration.jobs import REINGEST_TAG, VERSION_TAG, WRITER_TAG
from backup_pipeline.orchestration.resources import BackupEngine
from backup_pipeline.orchestration.sensors import SENSORS, evaluate
from backup_pipeline.topics import TOPICS, spec_for_table
from backup_pipeline_tests.helpers import good_records, hwms, key, produce

BEKREFTELSER = spec_for_table("bekreftelser")
HENDELSER = spec_for_table("bekreftelse_hendelser")


@pytest.fixture
def env(monkeypatch, services, database_url, topic_names):
    monkeypatch.setenv("KAFKA_BROKERS", services["KAFKA_BROKERS"])
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("BACKUP_VERSION", "1")
    for spec in TOPICS:
        monkeypatch.setenv(spec.topic_env_var, topic_names[spec.table])
    return monkeypatch


def table_asset(table: str) -> dg.AssetsDefinition:
    return next(a for a in asset_defs.TABLE_ASSETS if a.key == dg.AssetKey(table))


def materialize(table: str, instance: dg.DagsterInstance, run_config=None):
    return dg.materialize(
        [table_asset(table)],
        instance=instance,
        resources={"engine": BackupEngine()},
        run_config=run_config,
    )


def checks_by_name(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_materializing_each_table_writes_rows_with_metadata_and_passing_checks(
    env, producer, topic_names, db
):
    instance = dg.DagsterInstance.ephemeral()
    for spec in TOPICS:
        produce(producer, topic_names[spec.table], good_records(spec, 25))
        result = materialize(spec.table, instance)
        assert result.success
        (mat,) = result.asset_materializations_for_node(spec.table)
        meta = mat.metadata
        assert meta["rows_written"].value == 25
        assert meta["quarantined"].value == 0 and meta["lag_after"].value == 0
        assert meta["version"].value == 1
        for name in (
            "records_per_second",
            "duration_seconds",
            "warnings",
            "records_lost",
            "partitions",
        ):
            assert name in meta
        checks = checks_by_name(result)
        assert set(checks) == {
            "caught_up",
            "no_quarantined_records",
            "no_retention_gaps",
            "offsets_accounted_for",
        }
        assert all(c.passed for c in checks.values()), checks
        count = db.execute(f"SELECT count(*) FROM {spec.table}").fetchone()[0]
        assert count == 25


def test_quarantined_records_fail_the_warning_check_and_say_where_to_look(
    env, producer, topic_names
):
    topic = topic_names[HENDELSER.table]
    produce(producer, topic, [*good_records(HENDELSER, 3), DemoRecord(key(1), None, [])])
    result = materialize(HENDELSER.table, dg.DagsterInstance.ephemeral())
    checks = checks_by_name(result)
    quarantine = checks["no_quarantined_records"]
    assert not quarantine.passed and quarantine.severity == dg.AssetCheckSeverity.WARN
    assert quarantine.metadata["quarantined"].value == 1
    assert "backup_quarantine" in quarantine.metadata["where_to_look"].value
    assert checks["offsets_accounted_for"].passed


def test_a_run_with_a_version_and_cap_from_run_config(env, producer, topic_names, db):
    topic = topic_names[BEKREFTELSER.table]
    produce(producer, topic, good_records(BEKREFTELSER, 40), partition=0)
    config = {"ops": {"bekreftelser": {"config": {"version": 5, "max_records": 10}}}}
    result = materialize(BEKREFTELSER.table, dg.DagsterInstance.ephemeral(), config)
    (mat,) = result.asset_materializations_for_node("bekreftelser")
    assert mat.metadata["version"].value == 5 and mat.metadata["rows_written"].value == 10
    assert not checks_by_name(result)["caught_up"].passed or mat.metadata["lag_after"].value <= 1000
    assert hwms(db, topic, 5)[0] == 9


def sensor_for(table: str) -> dg.SensorDefinition:
    return next(s for s in SENSORS if s.name == f"{table}_lag_sensor")


def tick(table: str, instance: dg.DagsterInstance, cursor: str | None = None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"engine": BackupEngine()}, definitions=defs
    )
    return sensor_for(table)(context), context


def test_sensor_requests_a_run_on_lag_and_skips_with_lag_0(env, producer, topic_names):
    instance = dg.DagsterInstance.ephemeral()
    topic = topic_names[BEKREFTELSER.table]
    produce(producer, topic, good_records(BEKREFTELSER, 12))
    result, _ = tick(BEKREFTELSER.table, instance)
    (request,) = result.run_requests
    assert request.tags[WRITER_TAG] == "bekreftelser:v1" and request.tags[VERSION_TAG] == "1"
    assert request.run_config["ops"]["bekreftelser"]["config"]["version"] == 1
    assert request.run_config["ops"]["bekreftelser"]["config"]["max_records"] == 1_000_000
    observation = result.asset_events[0]
    assert observation.metadata["lag"].value == 12

    assert materialize(BEKREFTELSER.table, instance).success
    result, _ = tick(BEKREFTELSER.table, instance)
    assert not result.run_requests
    assert "lag 0" in result.skip_reason.skip_message


def test_sensor_skips_while_a_run_for_the_topic_is_active(env, producer, topic_names):
    instance = dg.DagsterInstance.ephemeral()
    produce(producer, topic_names[BEKREFTELSER.table], good_records(BEKREFTELSER, 5))
    create_run_for_test(
        instance,
        job_name="backup_bekreftelser",
        status=dg.DagsterRunStatus.STARTED,
        tags={WRITER_TAG: "bekreftelser:v1"},
    )
    result, _ = tick(BEKREFTELSER.table, instance)
    assert not result.run_requests
    assert "still active" in result.skip_reason.skip_message


def test_a_new_version_is_reingested_in_capped_runs_then_the_sensor_switches(
    env, producer, topic_names, db
):
    instance = dg.DagsterInstance.ephemeral()
    topic = topic_names[HENDELSER.table]
    produce(producer, topic, good_records(HENDELSER, 30))
    assert materialize(HENDELSER.table, instance).success
    v1_rows = db.execute(
        "SELECT * FROM bekreftelse_hendelser WHERE version = 1 "
        "ORDER BY kafka_partition, kafka_offset"
    ).fetchall()

    env.setenv("BACKUP_VERSION", "2")
    env.setenv("BACKUP_BACKFILL_RUN_RECORDS", "20")
    env.setenv("BACKUP_CAUGHT_UP_MAX_LAG", "0")
    produce(producer, topic, good_records(HENDELSER, 5, seed=9))
    result, context = tick(HENDELSER.table, instance, cursor="1")
    by_version = {r.tags[VERSION_TAG]: r for r in result.run_requests}
    # The previous version keeps being backed up while version 2 is re-ingested.
    assert set(by_version) == {"1", "2"}
    assert by_version["2"].tags[REINGEST_TAG] == "v2"
    assert by_version["2"].run_config["ops"][HENDELSER.table]["config"]["max_records"] == 20
    progress = next(e for e in result.asset_events if e.asset_key == dg.AssetKey(HENDELSER.table))
    assert progress.metadata["reingest_records_total"].value == 35
    assert progress.metadata["reingest_records_done"].value == 0

    for request in result.run_requests:
        cfg = request.run_config
        assert materialize(HENDELSER.table, instance, cfg).success
    result, context = tick(HENDELSER.table, instance, cursor=context.cursor)
    (request,) = result.run_requests
    assert request.tags[VERSION_TAG] == "2"  # 20 of 35 done: one more capped run
    assert materialize(HENDELSER.table, instance, request.run_config).success

    result, context = tick(HENDELSER.table, instance, cursor=context.cursor)
    assert not result.run_requests
    message = result.skip_reason.skip_message
    assert "switched from version 1 to version 2" in message and "lag 0" in message
    # The old version's rows are byte-identical (and it got the 5 new records too).
    v1_after = {
        (r[1], r[2]): r
        for r in db.execute("SELECT * FROM bekreftelse_hendelser WHERE version = 1").fetchall()
    }
    assert len(v1_after) == 35
    assert all(v1_after[(r[1], r[2])] == r for r in v1_rows)
    assert (
        db.execute("SELECT count(*) FROM bekreftelse_hendelser WHERE version = 2").fetchone()[0]
        == 35
    )


def test_reingestion_waits_for_its_window(env, producer, topic_names):
    instance = dg.DagsterInstance.ephemeral()
    topic = topic_names[BEKREFTELSER.table]
    produce(producer, topic, good_records(BEKREFTELSER, 4))
    assert materialize(BEKREFTELSER.table, instance).success
    env.setenv("BACKUP_VERSION", "2")
    engine = BackupEngine()
    view = engine.topic_view(BEKREFTELSER)
    context = dg.build_sensor_context(instance=instance)
    noon = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    result = evaluate(context, BEKREFTELSER, view, 100, "22:00-06:00", now=noon)
    assert not result.run_requests
    assert "waiting for window 22:00-06:00" in result.skip_reason.skip_message
    night = datetime(2026, 1, 1, 23, 0, tzinfo=UTC)
    result = evaluate(context, BEKREFTELSER, view, 100, "22:00-06:00", now=night)
    assert [r.tags[VERSION_TAG] for r in result.run_requests] == ["2"]


def test_the_backup_job_runs_its_checks_but_not_the_sample_verify(env, producer, topic_names):
    produce(producer, topic_names[BEKREFTELSER.table], good_records(BEKREFTELSER, 5))
    job = defs.resolve_job_def("backup_bekreftelser")
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    assert set(checks_by_name(result)) == {
        "caught_up",
        "no_quarantined_records",
        "no_retention_gaps",
        "offsets_accounted_for",
    }
