"""A new restore target's configuration: the retention rule, configuration from the source or
keeping everything, a resume that checks the target's retention again, and a log-append-time
source whose timestamps a new target keeps."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from confluent_kafka.admin import (
    AdminClient,
)

from backup_pipeline.backup.run import backup_topic
from backup_pipeline.cli.restore import restore_command
from backup_pipeline.errors import RestoreError
from backup_pipeline.kafka.admin import create_topics
from backup_pipeline.readback import Extent
from backup_pipeline.restore.run import RestoreRequest, restore, resume
from backup_pipeline.restore.target_topic import (
    KEEP_EVERY_RECORD,
    KEEP_TIMESTAMPS,
    new_target_config,
    retention_problem,
)
from backup_pipeline.topics import spec_for_table
from backup_pipeline_tests.fix_kafka import key, read_topic, without_offsets
from backup_pipeline_tests.test_restore_target import (
    count_records,
    own_configs,
    produce_old,
    set_topic_configs,
)
from dev.harness.waits import bounded

BEKREFTELSER = spec_for_table("bekreftelser")
DAY_MS = 86_400_000


def extent(oldest_ms: int | None, records: int = 1, payload: int = 10) -> dict[int, Extent]:
    return {0: Extent(records, oldest_ms, payload)}


def test_the_retention_rule() -> None:
    now = 1_000 * DAY_MS
    week = str(7 * DAY_MS)
    assert retention_problem("t", KEEP_EVERY_RECORD, extent(0), now) is None
    assert "retention.ms" in (retention_problem("t", {"retention.ms": week}, extent(0), now) or "")
    # Within the retention, but due within the hour margin: still refused.
    due = now - 7 * DAY_MS + 60_000
    assert retention_problem("t", {"retention.ms": week}, extent(due), now) is not None
    assert retention_problem("t", {"retention.ms": week}, extent(now - DAY_MS), now) is None
    # No timestamps (rows from before the timestamp column): the producer stamps them now.
    assert retention_problem("t", {"retention.ms": week}, extent(None), now) is None
    append = {"retention.ms": week, "message.timestamp.type": "LogAppendTime"}
    assert retention_problem("t", append, extent(0), now) is None
    assert retention_problem("t", {"cleanup.policy": "compact,delete"}, extent(now), now)
    assert retention_problem("t", {"retention.bytes": "1000"}, extent(now, 20, 10), now)
    assert retention_problem("t", {"retention.bytes": "1000"}, extent(now, 2, 10), now) is None


def test_a_new_targets_configuration_comes_from_the_source_or_keeps_everything() -> None:
    source = {
        "retention.ms": ("60000", True),
        "retention.bytes": ("-1", False),
        "cleanup.policy": ("compact", True),
        "max.message.bytes": ("2000000", True),
        "segment.bytes": ("1073741824", False),
        "message.timestamp.before.max.ms": ("3600000", True),
    }
    kept = KEEP_EVERY_RECORD | KEEP_TIMESTAMPS
    assert new_target_config(None, keep_source_retention=False).configs == kept
    assert new_target_config(None, keep_source_retention=True).configs == kept
    assert new_target_config(source, keep_source_retention=False).configs == {
        **kept,
        "max.message.bytes": "2000000",
    }
    assert new_target_config(source, keep_source_retention=True).configs == {
        "retention.ms": "60000",
        "retention.bytes": "-1",
        "cleanup.policy": "compact",
        "max.message.bytes": "2000000",
        "message.timestamp.type": "CreateTime",
    }
    # A LogAppendTime source: the restore would be stamped anew, so never copied.
    appended = {**source, "message.timestamp.type": ("LogAppendTime", True)}
    plan = new_target_config(appended, keep_source_retention=False)
    assert plan.configs["message.timestamp.type"] == "CreateTime"
    assert "although the source has LogAppendTime" in plan.describe()


def test_a_resume_checks_the_targets_retention_again(
    settings: Any, admin: AdminClient, services: dict[str, str]
) -> None:
    topic = settings.topic(BEKREFTELSER)
    set_topic_configs(admin, topic, retention_ms="-1")
    produce_old(services["KAFKA_BROKERS"], topic, 9, age_ms=30 * DAY_MS)
    backup_topic(settings, BEKREFTELSER)
    target = f"{topic}.resumed"
    first = restore(settings, RestoreRequest("bekreftelser", target_topic=target), max_records=3)
    assert first.status == "stopped"
    # Someone gives the target the usual seven days before the run is resumed.
    set_topic_configs(admin, target, retention_ms=str(7 * DAY_MS))
    with pytest.raises(RestoreError, match=r"retention\.ms=604800000.*--allow-retention-loss"):
        resume(settings, first.run_id)
    set_topic_configs(admin, target, retention_ms="-1")
    second = resume(settings, first.run_id)
    assert second.status == "completed" and second.restored == 6
    assert (
        "cleanup.policy=delete, message.timestamp.type=CreateTime (keeps every restored "
        "record, with its original timestamp)" in second.summary()
    )


def test_a_log_append_time_source_restored_into_a_new_target_keeps_every_timestamp(
    settings: Any, admin: AdminClient, services: dict[str, str], database_url: str, db: Any
) -> None:
    """The target is created with CreateTime: the broker keeps the timestamps the restore
    writes (those the backup stored), through a kill -9 and --resume too. An existing
    LogAppendTime target is refused unless new timestamps are accepted."""
    brokers = services["KAFKA_BROKERS"]
    topic = settings.topic(BEKREFTELSER)
    set_topic_configs(admin, topic, retention_ms="-1")
    produce_old(brokers, topic, 30, age_ms=DAY_MS)
    # From now on the broker stamps the source's records itself, as on the real topic.
    set_topic_configs(admin, topic, message_timestamp_type="LogAppendTime")
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    for i in range(30, 36):
        producer.produce(topic, key=key(i), value=b"appended", partition=i % 3, timestamp=1)
    assert producer.flush(30) == 0
    original = read_topic(brokers, topic)
    assert sum(len(r) for r in original.values()) == 36
    assert min(r[4] for recs in original.values() for r in recs[-2:]) > 1  # broker-stamped
    backup_topic(settings, BEKREFTELSER)
    env = {
        "KAFKA_BROKERS": brokers,
        "DATABASE_URL": database_url,
        BEKREFTELSER.topic_env_var: topic,
    }

    # Killed after Kafka acknowledged partition 0's records, before their checkpoint.
    target = f"{topic}.restored"
    killed = subprocess.run(
        [
            *(sys.executable, "-m", "backup_pipeline.cli", "restore"),
            *("--table", "bekreftelser", "--target", target, "--no-migrate"),
        ],
        env={**os.environ, **env, "BACKUP_PIPELINE_FAILPOINT": "restore_before_checkpoint:1"},
        timeout=bounded(120),
        capture_output=True,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr
    (run_id,) = db.execute("SELECT run_id FROM restore_runs").fetchone()
    assert len(read_topic(brokers, target)[0]) == 12
    runner = CliRunner()
    resumed = runner.invoke(restore_command, ["--resume", str(run_id), "--no-migrate"], env=env)
    assert resumed.exit_code == 0, resumed.output
    assert "12 already in the target (resume)" in resumed.output
    # Every record with its original timestamp, none twice.
    assert without_offsets(read_topic(brokers, target)) == without_offsets(original)
    assert own_configs(admin, target)["message.timestamp.type"] == "CreateTime"
    assert "message.timestamp.type=CreateTime" in resumed.output
    assert "with its original timestamp" in resumed.output

    # A new target's report says so.
    fresh = runner.invoke(
        restore_command,
        ["--table", "bekreftelser", "--target", f"{topic}.fresh", "--no-migrate"],
        env=env,
    )
    assert fresh.exit_code == 0, fresh.output
    assert (
        "records keep their original timestamps (CreateTime, although the source has "
        "LogAppendTime)" in fresh.output
    )

    # An existing LogAppendTime target: one line, nothing written, unless accepted.
    stamping = f"{topic}.stamping"
    create_topics(
        admin,
        [stamping],
        partitions=3,
        config={"retention.ms": "-1", "message.timestamp.type": "LogAppendTime"},
    )
    refused = runner.invoke(
        restore_command,
        ["--table", "bekreftelser", "--target", stamping, "--no-migrate"],
        env=env,
    )
    assert refused.exit_code == 2, refused.output
    assert refused.output.count("\n") == 1 and refused.output.startswith("error: refusing")
    assert "message.timestamp.type=LogAppendTime" in refused.output
    assert "--accept-new-timestamps" in refused.output
    assert count_records(brokers, stamping) == 0
    accepted = runner.invoke(
        restore_command,
        [
            *("--table", "bekreftelser", "--target", stamping),
            *("--accept-new-timestamps", "--no-migrate"),
        ],
        env=env,
    )
    assert accepted.exit_code == 0, accepted.output
    assert "WARNING" in accepted.output and "LogAppendTime" in accepted.output
    assert count_records(brokers, stamping) == 36
