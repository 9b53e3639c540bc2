"""The restore target's configuration: restored records must outlive the broker's retention.

Restored records keep their original timestamps, so a target with the source's (or the
broker's default) retention deletes old ones at its next retention check. The dev broker
checks every 2 s (dev/services), so these tests see a check run against real Kafka.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)

from backup_pipeline.backed_up import Extent
from backup_pipeline.backup.pass_ import backup_topic
from backup_pipeline.cli.restore import restore_command
from backup_pipeline.errors import KafkaUnavailableError, RestoreError
from backup_pipeline.restore import target_topic
from backup_pipeline.restore.run import RestoreRequest, restore, resume
from backup_pipeline.restore.target_topic import (
    KEEP_EVERY_RECORD,
    KEEP_TIMESTAMPS,
    new_target_config,
    retention_problem,
    topic_configs,
)
from backup_pipeline.topics import spec_for_table
from backup_pipeline.topics_admin import create_topics
from backup_pipeline_tests.fix_kafka import good_records, key, read_topic, without_offsets
from dev.harness.kafka import delete_topic
from dev.harness.waits import bounded, scaled, wait_until

BEKREFTELSER = spec_for_table("bekreftelser")
DAY_MS = 86_400_000


def now_ms() -> int:
    return int(time.time() * 1000)


def set_topic_configs(admin: AdminClient, topic: str, **configs: str) -> None:
    entries = [
        ConfigEntry(name.replace("_", "."), value, incremental_operation=AlterConfigOpType.SET)
        for name, value in configs.items()
    ]
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=entries)
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()
    # Acknowledged by the controller, applied by the broker a moment later.
    wanted = {entry.name: entry.value for entry in entries}

    def in_force() -> bool:
        try:
            return wanted.items() <= own_configs(admin, topic).items()
        except KafkaUnavailableError:  # a new topic the broker has not applied yet
            return False

    wait_until(
        in_force,
        30,
        f"{topic}'s new configuration to be in force",
        interval=0.1,
    )


def own_configs(admin: AdminClient, topic: str) -> dict[str, str]:
    """The configuration set on the topic itself (not inherited from the broker)."""
    return {k: v for k, (v, own) in topic_configs(admin, topic, 10).items() if own}


def produce_old(brokers: str, topic: str, n: int, age_ms: int) -> None:
    """``n`` records over the three partitions, timestamped ``age_ms`` ago (and older)."""
    producer = Producer({"bootstrap.servers": brokers, "enable.idempotence": True})
    start = now_ms() - age_ms
    for i, r in enumerate(good_records(BEKREFTELSER, n, seed=31)):
        producer.produce(
            topic,
            key=key(i),
            value=r.value,
            headers=list(r.headers),
            partition=i % 3,
            timestamp=start - 1000 * (n - i),
        )
    assert producer.flush(30) == 0


def wait_for_retention_checks(admin: AdminClient, brokers: str, rounds: int = 2) -> None:
    """Return once the broker has run a retention check that began after this call.

    A canary topic with 1 s retention gets a record an hour old; the broker deleting it is
    a check that ran. The second round's check began after the first one ended, so it
    began after every write that happened before this call.
    """
    canary = f"canary.{uuid.uuid4().hex[:10]}"
    create_topics(admin, [canary], partitions=1, config={"retention.ms": "1000"})
    producer = Producer({"bootstrap.servers": brokers})
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"canary-{canary}"})
    try:
        for written in range(1, rounds + 1):
            producer.produce(canary, value=b"old", partition=0, timestamp=now_ms() - 3_600_000)
            assert producer.flush(30) == 0
            deadline = time.monotonic() + scaled(60)
            while True:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(canary, 0), timeout=10, cached=False
                )
                if high >= written and low >= high:
                    break
                assert time.monotonic() < deadline, (
                    "the broker ran no retention check in 60 s: dev/services sets "
                    "log.retention.check.interval.ms=2000; restart a broker started before that"
                )
                time.sleep(0.2)
    finally:
        consumer.close()
        admin.delete_topics([canary])


def count_records(brokers: str, topic: str) -> int:
    return sum(len(r) for r in read_topic(brokers, topic).values())


def topic_exists(admin: AdminClient, topic: str) -> bool:
    return topic in admin.list_topics(timeout=10).topics


def test_restored_records_older_than_the_sources_retention_outlive_a_retention_check(
    settings: Any, admin: AdminClient, services: dict[str, str]
) -> None:
    brokers = services["KAFKA_BROKERS"]
    topic = settings.topic(BEKREFTELSER)
    produce_old(brokers, topic, 21, age_ms=2 * 3_600_000)  # two hours old
    original = read_topic(brokers, topic)
    backup_topic(settings, BEKREFTELSER)
    # The source keeps records a minute; one setting that is not about retention.
    set_topic_configs(admin, topic, retention_ms="60000", max_message_bytes="2000000")

    kept = f"{topic}.kept"
    report = restore(settings, RestoreRequest("bekreftelser", target_topic=kept))
    assert own_configs(admin, kept) == {
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "cleanup.policy": "delete",
        "max.message.bytes": "2000000",
        "message.timestamp.type": "CreateTime",
    }
    assert "retention.ms=-1" in report.summary() and "max.message.bytes=2000000" in report.summary()

    # Asked to copy the source's retention, the restore refuses before creating anything.
    refused = f"{topic}.refused"
    with pytest.raises(RestoreError, match=r"retention\.ms=60000.*--allow-retention-loss"):
        restore(
            settings,
            RestoreRequest("bekreftelser", target_topic=refused, keep_source_retention=True),
        )
    assert not topic_exists(admin, refused)
    # Forced through, it shows what the check would have done to the records.
    lost = f"{topic}.lost"
    forced = restore(
        settings,
        RestoreRequest(
            "bekreftelser",
            target_topic=lost,
            keep_source_retention=True,
            allow_retention_loss=True,
        ),
    )
    assert forced.restored == 21 and "WARNING" in forced.target_config
    assert own_configs(admin, lost)["retention.ms"] == "60000"

    wait_for_retention_checks(admin, brokers)
    assert without_offsets(read_topic(brokers, kept)) == without_offsets(original)
    assert count_records(brokers, lost) == 0  # the same records, with the source's retention


def test_a_deleted_topic_restored_under_its_own_name_keeps_every_record(
    settings: Any, admin: AdminClient, services: dict[str, str]
) -> None:
    brokers = services["KAFKA_BROKERS"]
    topic = settings.topic(BEKREFTELSER)
    set_topic_configs(admin, topic, retention_ms="-1")
    produce_old(brokers, topic, 12, age_ms=30 * DAY_MS)  # beyond the broker's default 7 days
    original = read_topic(brokers, topic)
    backup_topic(settings, BEKREFTELSER)
    delete_topic(admin, topic)

    report = restore(settings, RestoreRequest("bekreftelser", target_topic=topic, force=True))
    assert report.created_topic and report.restored == 12
    assert own_configs(admin, topic) == KEEP_EVERY_RECORD | KEEP_TIMESTAMPS
    assert "source topic gone: keeps every record" in report.summary()
    wait_for_retention_checks(admin, brokers)
    assert without_offsets(read_topic(brokers, topic)) == without_offsets(original)


def test_a_target_that_appears_between_the_look_and_the_create_is_checked_like_any_existing(
    settings: Any, admin: AdminClient, services: dict[str, str], monkeypatch: Any
) -> None:
    """The restore looks for the target, then creates it; a topic created in between (or
    one the metadata did not show yet) must not slip past the retention check."""
    topic = settings.topic(BEKREFTELSER)
    set_topic_configs(admin, topic, retention_ms="-1")
    produce_old(services["KAFKA_BROKERS"], topic, 6, age_ms=30 * DAY_MS)
    backup_topic(settings, BEKREFTELSER)
    compacted = f"{topic}.compacted"
    create_topics(admin, [compacted], partitions=3, config={"cleanup.policy": "compact"})
    real_partition_count = target_topic.partition_count
    looks: list[str] = []

    def not_there_at_the_first_look(admin: AdminClient, name: str, timeout: float) -> int | None:
        if name == compacted and not looks:
            looks.append(name)
            return None
        return real_partition_count(admin, name, timeout)

    monkeypatch.setattr(target_topic, "partition_count", not_there_at_the_first_look)
    with pytest.raises(RestoreError, match=r"cleanup\.policy=compact"):
        restore(settings, RestoreRequest("bekreftelser", target_topic=compacted, force=True))
    assert looks == [compacted]
    assert count_records(services["KAFKA_BROKERS"], compacted) == 0


def test_an_existing_target_that_would_drop_restored_records_is_refused_in_one_line(
    settings: Any, admin: AdminClient, services: dict[str, str], database_url: str
) -> None:
    brokers = services["KAFKA_BROKERS"]
    topic = settings.topic(BEKREFTELSER)
    set_topic_configs(admin, topic, retention_ms="-1")
    produce_old(brokers, topic, 6, age_ms=30 * DAY_MS)
    backup_topic(settings, BEKREFTELSER)
    env = {
        "KAFKA_BROKERS": brokers,
        "DATABASE_URL": database_url,
        BEKREFTELSER.topic_env_var: topic,
    }
    runner = CliRunner()
    # Broker default retention (7 days) against records 30 days old.
    default = f"{topic}.default"
    create_topics(admin, [default], partitions=3)
    result = runner.invoke(
        restore_command, ["--table", "bekreftelser", "--target", default, "--force"], env=env
    )
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and result.output.startswith("error: refusing")
    assert "retention.ms=604800000" in result.output
    assert "--allow-retention-loss" in result.output
    assert count_records(brokers, default) == 0

    compacted = f"{topic}.compacted"
    create_topics(admin, [compacted], partitions=3, config={"cleanup.policy": "compact"})
    with pytest.raises(RestoreError, match=r"cleanup\.policy=compact"):
        restore(settings, RestoreRequest("bekreftelser", target_topic=compacted, force=True))
    small = f"{topic}.small"
    create_topics(
        admin, [small], partitions=3, config={"retention.ms": "-1", "retention.bytes": "100"}
    )
    with pytest.raises(RestoreError, match=r"retention\.bytes=100"):
        restore(settings, RestoreRequest("bekreftelser", target_topic=small, force=True))

    # An existing topic that keeps everything is written, and the report says so.
    roomy = f"{topic}.roomy"
    create_topics(admin, [roomy], partitions=3, config={"retention.ms": "-1"})
    result = runner.invoke(restore_command, ["--table", "bekreftelser", "--target", roomy], env=env)
    assert result.exit_code == 0, result.output
    assert "existing topic, left as it is" in result.output
    assert "retention.ms=-1" in result.output and "keeps every restored record" in result.output
    # The override writes anyway and says what it risks.
    result = runner.invoke(
        restore_command,
        ["--table", "bekreftelser", "--target", default, "--force", "--allow-retention-loss"],
        env=env,
    )
    assert result.exit_code == 0 and "WARNING" in result.output, result.output


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
