"""The restore target's configuration: restored records must outlive the broker's retention.

Restored records keep their original timestamps, so a target with the source's (or the
broker's default) retention deletes old ones at its next retention check. The dev broker
checks every 2 s (dev/services), so these tests see a check run against real Kafka.
Here: existing and deleted targets; a new target's configuration, resumes and log-append-time
sources are in test_restore_target_config.py (which uses the helpers here).
"""

from __future__ import annotations

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

from backup_pipeline.backup.run import backup_topic
from backup_pipeline.cli.restore import restore_command
from backup_pipeline.errors import KafkaUnavailableError, RestoreError
from backup_pipeline.kafka.admin import create_topics
from backup_pipeline.restore import target_topic
from backup_pipeline.restore.run import RestoreRequest, restore
from backup_pipeline.restore.target_topic import (
    KEEP_EVERY_RECORD,
    KEEP_TIMESTAMPS,
    topic_configs,
)
from backup_pipeline.topics import spec_for_table
from backup_pipeline_tests.fix_kafka import good_records, key, read_topic, without_offsets
from dev.harness.kafka import delete_topic
from dev.harness.waits import scaled, wait_until

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
