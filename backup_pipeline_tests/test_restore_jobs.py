"""Restore and verify from Dagster: the restore job and the sample-verify asset check."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import cast

import dagster as dg
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from backup_pipeline.backup.run import backup_topic
from backup_pipeline.cli.restore import restore_command
from backup_pipeline.definitions import defs
from backup_pipeline.orchestration.assets import topic_asset_key
from backup_pipeline.orchestration.restore_jobs import restore_job
from backup_pipeline.restore.run import RestoreRequest, restore
from backup_pipeline.topics import TOPICS, spec_for_table
from backup_pipeline_tests.fix_kafka import good_records, produce, read_topic
from dev.harness.kafka import delete_topic

BEKREFTELSER = spec_for_table("bekreftelser")


@pytest.fixture
def env(monkeypatch, services, database_url, topic_names):
    monkeypatch.setenv("KAFKA_BROKERS", services["KAFKA_BROKERS"])
    monkeypatch.setenv("DATABASE_URL", database_url)
    for spec in TOPICS:
        monkeypatch.setenv(spec.topic_env_var, topic_names[spec.table])
    return monkeypatch


def test_the_restore_job_writes_the_backup_to_a_new_topic(env, settings, producer, topic_names):
    produce(producer, topic_names["bekreftelser"], good_records(BEKREFTELSER, 30))
    backup_topic(settings, BEKREFTELSER)
    target = topic_names["bekreftelser"] + ".restored-by-dagster"
    config = {
        "ops": {
            "restore_topic": {
                "config": {"table": "bekreftelser", "target_topic": target, "partitions": [0, 1, 2]}
            }
        }
    }
    result = restore_job.execute_in_process(
        run_config=config, instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = event.step_output_data.metadata
    assert metadata["records_restored"].value == 30
    assert metadata["target_topic"].value == target
    assert metadata["status"].value == "completed"


def test_the_restore_jobs_offsets_select_only_their_partitions(
    env, settings, producer, topic_names
):
    records = good_records(BEKREFTELSER, 12)
    for partition in range(3):
        produce(producer, topic_names["bekreftelser"], records[partition::3], partition=partition)
    backup_topic(settings, BEKREFTELSER)
    target = topic_names["bekreftelser"] + ".offsets-by-dagster"
    config = {
        "ops": {
            "restore_topic": {
                "config": {
                    "table": "bekreftelser",
                    "target_topic": target,
                    "offsets": {"1": [0, 1]},
                }
            }
        }
    }
    result = restore_job.execute_in_process(
        run_config=config, instance=dg.DagsterInstance.ephemeral()
    )
    assert result.success
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = event.step_output_data.metadata
    assert metadata["by_partition"].value == {"1": 2}
    assert metadata["records_restored"].value == 2


def test_a_time_without_a_zone_is_utc_in_the_restore_job_and_the_cli_on_an_oslo_server(
    env, settings, db, database_url, producer, services, topic_names
):
    # A server whose sessions run in Europe/Oslo (UTC+1 in winter, +2 in summer): a naive
    # time reaching `kafka_timestamp >= %(since)s` would be read as Oslo time.
    name = db.execute("SELECT current_database()").fetchone()
    assert name is not None
    db.execute(
        sql.SQL("ALTER DATABASE {} SET timezone = 'Europe/Oslo'").format(sql.Identifier(name[0]))
    )
    with psycopg.connect(database_url) as session:
        assert session.execute("SHOW timezone").fetchone() == ("Europe/Oslo",)
    topic = topic_names["bekreftelser"]
    # A whole hour a day ago (inside the broker's retention); records 90 and 30 minutes
    # before it and 30 and 90 minutes after it.
    hour_ms = (int(time.time()) // 3600 - 24) * 3600 * 1000
    stamps = [hour_ms + minutes * 60_000 for minutes in (-90, -30, 30, 90)]
    for record, stamp in zip(good_records(BEKREFTELSER, 4), stamps, strict=True):
        producer.produce(topic, key=record.key, value=record.value, partition=0, timestamp=stamp)
    assert producer.flush(30) == 0
    backup_topic(settings, BEKREFTELSER)
    naive = "%Y-%m-%dT%H:%M:%S"
    since = datetime.fromtimestamp(hour_ms / 1000, UTC).strftime(naive)
    until = datetime.fromtimestamp(hour_ms / 1000 + 7200, UTC).strftime(naive)

    by_dagster, by_cli = f"{topic}.window-dagster", f"{topic}.window-cli"
    config = {"table": "bekreftelser", "target_topic": by_dagster, "since": since, "until": until}
    result = restore_job.execute_in_process(
        run_config={"ops": {"restore_topic": {"config": config}}},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    cli = CliRunner().invoke(
        restore_command,
        ["--table", "bekreftelser", "--target", by_cli, "--since", since, "--until", until],
        env={
            "KAFKA_BROKERS": services["KAFKA_BROKERS"],
            "DATABASE_URL": database_url,
            BEKREFTELSER.topic_env_var: topic,
        },
    )
    assert cli.exit_code == 0, cli.output

    def restored_stamps(target: str) -> list[int]:
        return sorted(
            r[4] for recs in read_topic(services["KAFKA_BROKERS"], target).values() for r in recs
        )

    # [since, until) in UTC: the records 30 and 90 minutes after the hour, in both.
    assert restored_stamps(by_dagster) == stamps[2:]
    assert restored_stamps(by_cli) == stamps[2:]


def test_the_verify_check_passes_then_finds_a_changed_row(env, settings, producer, topic_names, db):
    produce(producer, topic_names["bekreftelser"], good_records(BEKREFTELSER, 20))
    backup_topic(settings, BEKREFTELSER)
    job = defs.resolve_job_def("verify_backups")
    instance = dg.DagsterInstance.ephemeral()

    def evaluation() -> dg.AssetCheckEvaluation:
        result = job.execute_in_process(instance=instance)
        return next(
            e
            for e in result.get_asset_check_evaluations()
            if e.asset_key == topic_asset_key(BEKREFTELSER)
        )

    assert evaluation().passed
    db.execute(
        "UPDATE bekreftelser SET data = '\\x00'::bytea "
        "WHERE kafka_partition = 0 AND kafka_offset = 0"
    )
    changed = evaluation()
    assert not changed.passed
    assert changed.metadata["different"].value == 1


def test_the_verify_check_recognises_a_topic_restored_under_its_own_name(
    env, settings, producer, admin, topic_names
):
    topic = topic_names["bekreftelser"]
    # A record with a two-byte key is quarantined; the restore leaves it out, so every
    # restored record of partition 0 lands one offset lower than in the backup.
    producer.produce(topic, key=b"\x01\x02", value=b"bad key", partition=0)
    produce(producer, topic, good_records(BEKREFTELSER, 12), partition=0)
    backup_topic(settings, BEKREFTELSER)
    delete_topic(admin, topic)
    restored = restore(
        settings,
        RestoreRequest("bekreftelser", target_topic=topic, force=True, origin_headers=False),
    )
    assert restored.restored == 12
    result = defs.resolve_job_def("verify_backups").execute_in_process(
        instance=dg.DagsterInstance.ephemeral()
    )
    check = next(
        e
        for e in result.get_asset_check_evaluations()
        if e.asset_key == topic_asset_key(BEKREFTELSER)
    )
    assert check.passed, check.metadata["summary"].value
    assert cast(int, check.metadata["compared"].value) > 0
    assert check.metadata["excluded_by_restore"].value == 1  # the quarantined record
