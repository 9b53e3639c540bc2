"""The topic a restore writes into: its name, creation, and the checks before writing."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, ResourceType

from backup_pipeline.errors import KafkaUnavailableError, RestoreError
from backup_pipeline.kafka import client
from backup_pipeline.kafka.admin import create_topics
from backup_pipeline.kafka.config import serve_admin_log
from backup_pipeline.readback import Extent

# Restored records keep their original timestamps, so time retention judges them by when
# they were first written: a new target keeps every record until someone decides otherwise.
KEEP_EVERY_RECORD = {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"}
# Not copied from the source: a limit on how old a record's timestamp may be would make
# the broker refuse the restored records themselves.
NOT_COPIED = frozenset({"message.timestamp.before.max.ms", "message.timestamp.difference.max.ms"})
# Records that expire within this much of the start count as deleted: the restore itself
# takes a while, and nobody restores records to see them vanish in the next minutes.
RETENTION_MARGIN_MS = 3_600_000
# Per-record overhead on disk (record header, a share of the batch header): errs high.
RECORD_OVERHEAD_BYTES = 80
OVERRIDE_FLAG = "--allow-retention-loss (restore_job: allow_retention_loss)"
# A restored record keeps the timestamp it had: with LogAppendTime the broker would replace
# it by the time of the restore. So a new target is created with CreateTime, whatever the
# source's type (a LogAppendTime source's records carry the broker's append time, which
# the backup stored: that is the time they keep).
TIMESTAMP_TYPE = "message.timestamp.type"
KEEP_TIMESTAMPS = {TIMESTAMP_TYPE: "CreateTime"}
NEW_TIMESTAMPS_FLAG = "--accept-new-timestamps (restore_job: accept_new_timestamps)"


def default_target(source_topic: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{source_topic}.restored-{stamp}"


def partition_count(admin: AdminClient, topic: str, timeout: float) -> int | None:
    """The topic's partition count, or None when it does not exist."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        serve_admin_log(admin)
        raise KafkaUnavailableError(f"cannot list topics: {exc}") from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return None
    return len(found.partitions)


class TopicGoneError(KafkaUnavailableError):
    """The broker does not know the topic (any more)."""


def source_configs(
    admin: AdminClient, topic: str, timeout: float
) -> tuple[int, dict[str, tuple[str, bool]]] | None:
    """The source topic's partition count and configuration, or None when it is gone.

    A topic deleted a moment ago can still be in the metadata while the broker already
    answers UNKNOWN_TOPIC_OR_PART for its configuration: that, too, is a deleted source.
    """
    partitions = partition_count(admin, topic, timeout)
    if partitions is None:
        return None
    try:
        return partitions, topic_configs(admin, topic, timeout)
    except TopicGoneError:
        return None


def topic_configs(admin: AdminClient, topic: str, timeout: float) -> dict[str, tuple[str, bool]]:
    """Every configuration entry of ``topic``: name -> (value, set on the topic itself)."""
    resource = ConfigResource(ResourceType.TOPIC, topic)
    try:
        future = next(iter(admin.describe_configs([resource], request_timeout=timeout).values()))
        entries = future.result()
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError) and error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise TopicGoneError(f"{topic} does not exist") from None
        serve_admin_log(admin)
        problem = f"cannot describe the configuration of {topic}: {exc}"
        raise KafkaUnavailableError(problem) from None
    topic_level = ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    return {
        name: (entry.value, int(entry.source) == topic_level)
        for name, entry in entries.items()
        # Sensitive values come back as None; topics have none, and none are copied.
        if entry.value is not None and not entry.is_sensitive
    }


@dataclass(frozen=True)
class TargetConfig:
    """The topic-level configuration a new target is created with, and where it came from."""

    configs: dict[str, str]
    origin: str

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(self.configs.items()))
        return f"{shown or 'broker defaults'} ({self.origin})"


def new_target_config(
    source_configs: Mapping[str, tuple[str, bool]] | None, *, keep_source_retention: bool
) -> TargetConfig:
    """The source's own (topic-level) settings; retention set to keep every record unless
    ``keep_source_retention``. Without a source topic: keep every record."""
    if source_configs is None:
        return TargetConfig(
            KEEP_EVERY_RECORD | KEEP_TIMESTAMPS,
            "source topic gone: keeps every record, records keep their original timestamps",
        )
    copied = {
        name: value
        for name, (value, own) in source_configs.items()
        if own and name not in NOT_COPIED
    }
    # Set even when the source has CreateTime: the broker's default may be LogAppendTime.
    stamped = _timestamps_note(source_configs)
    if keep_source_retention:
        # The source's effective values, broker defaults included, so the check sees them.
        for name in KEEP_EVERY_RECORD:
            if name in source_configs:
                copied[name] = source_configs[name][0]
        copied.update(KEEP_TIMESTAMPS)
        return TargetConfig(copied, f"copied from the source, its retention too; {stamped}")
    copied.update(KEEP_EVERY_RECORD | KEEP_TIMESTAMPS)
    return TargetConfig(
        copied,
        f"copied from the source, retention set to keep every restored record; {stamped}",
    )


def _timestamps_note(source_configs: Mapping[str, tuple[str, bool]]) -> str:
    if source_configs.get(TIMESTAMP_TYPE, ("CreateTime", False))[0] == "LogAppendTime":
        return (
            "records keep their original timestamps (CreateTime, although the source "
            "has LogAppendTime)"
        )
    return "records keep their original timestamps"


def check_timestamps(topic: str, configs: Mapping[str, str], *, accept: bool) -> str | None:
    """Refuse an existing target that would stamp restored records with the time of the
    restore (LogAppendTime); with ``accept``, return that as a problem to report."""
    if configs.get(TIMESTAMP_TYPE) != "LogAppendTime":
        return None
    problem = (
        f"{topic} has {TIMESTAMP_TYPE}=LogAppendTime: the broker would replace every "
        "restored record's original timestamp with the time of the restore"
    )
    if not accept:
        raise RestoreError(
            f"refusing to restore: {problem}. Set {TIMESTAMP_TYPE}=CreateTime on it, restore "
            f"into a new topic (created with CreateTime), or pass {NEW_TIMESTAMPS_FLAG}"
        )
    return problem


def retention_problem(
    topic: str,
    configs: Mapping[str, str],
    extents: Mapping[int, Extent],
    now_ms: int | None = None,
) -> str | None:
    """Why Kafka would delete or compact away records about to be written, or None.

    ``configs`` are the topic's effective values (broker defaults included).
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    policy = {p.strip() for p in configs.get("cleanup.policy", "delete").split(",")}
    if "compact" in policy:
        return (
            f"{topic} has cleanup.policy={configs.get('cleanup.policy')}: compaction keeps only "
            "the last record per key (and refuses records without a key)"
        )
    if "delete" not in policy:
        return None
    retention_ms = int(configs.get("retention.ms", "-1"))
    # LogAppendTime stamps records when written: time retention then counts from now.
    append_time = configs.get("message.timestamp.type") == "LogAppendTime"
    oldest = min((e.oldest_ms for e in extents.values() if e.oldest_ms is not None), default=None)
    if (
        retention_ms >= 0
        and not append_time
        and oldest is not None
        and oldest + retention_ms < now_ms + RETENTION_MARGIN_MS
    ):
        when = datetime.fromtimestamp(oldest / 1000, UTC).isoformat(timespec="seconds")
        return (
            f"{topic} has retention.ms={retention_ms}, and the oldest record to restore is "
            f"from {when}: the next retention check would delete restored records"
        )
    retention_bytes = int(configs.get("retention.bytes", "-1"))
    if retention_bytes >= 0:
        for partition, e in sorted(extents.items()):
            size = e.payload_bytes + e.records * RECORD_OVERHEAD_BYTES
            if size > retention_bytes:
                return (
                    f"{topic} has retention.bytes={retention_bytes}, and about {size} bytes are "
                    f"to be restored into partition {partition}: the oldest would be deleted"
                )
    return None


def check_retention(
    topic: str, configs: Mapping[str, str], extents: Mapping[int, Extent], *, allow: bool
) -> str | None:
    """Refuse when Kafka would drop restored records; with ``allow``, return the problem."""
    problem = retention_problem(topic, configs, extents)
    if problem is not None and not allow:
        raise RestoreError(
            f"refusing to restore: {problem}. Change the topic's configuration, restore into "
            f"a new topic, or pass {OVERRIDE_FLAG}"
        )
    return problem


def ensure_topic(
    admin: AdminClient,
    topic: str,
    partitions: int,
    timeout: float,
    config: Mapping[str, str] | None = None,
) -> bool:
    """Create ``topic`` with ``partitions`` when missing; True when it was created."""
    if partition_count(admin, topic, timeout) is not None:
        return False
    created = bool(
        # Replicated like any topic of the cluster (default.replication.factor), not once.
        create_topics(
            admin,
            [topic],
            partitions,
            timeout=max(timeout, 30.0),
            config=config,
            replication_factor=-1,
        )
    )
    # Metadata reaches every client a little after the creation is acknowledged.
    deadline = time.monotonic() + 30
    while (partition_count(admin, topic, timeout) or 0) < partitions:
        if time.monotonic() > deadline:
            raise KafkaUnavailableError(f"created topic {topic} never showed in metadata")
        time.sleep(0.2)
    return created


def end_offsets(
    consumer: Consumer, topic: str, timeout: float, settle_seconds: float = 30.0
) -> dict[int, client.Watermarks]:
    """Watermarks of every partition; a new topic's leaders may take a moment to settle."""
    deadline = time.monotonic() + settle_seconds
    while True:
        try:
            return {
                p: client.watermarks(consumer, topic, p, timeout)
                for p in client.partitions(consumer, topic, timeout)
            }
        except KafkaUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def check_writable(
    source_topic: str,
    target_topic: str,
    marks: dict[int, client.Watermarks],
    needed_partitions: int,
    *,
    force: bool,
) -> None:
    """Refuse what could mix restored records with live ones, unless forced."""
    if len(marks) < needed_partitions:
        raise RestoreError(
            f"target topic {target_topic} has {len(marks)} partitions but the backup has "
            f"records in partitions up to {needed_partitions - 1}; records keep their "
            "partition, so add partitions or choose another target"
        )
    if force:
        return
    refuse_source(source_topic, target_topic, force=force)
    holding = sorted(p for p, m in marks.items() if m.end > m.log_start)
    if holding:
        raise RestoreError(
            f"refusing to restore into {target_topic}: it already holds records (partitions "
            f"{', '.join(map(str, holding))}). Choose a new topic, or pass force"
        )


def refuse_source(source_topic: str, target_topic: str, *, force: bool) -> None:
    if target_topic == source_topic and not force:
        raise RestoreError(
            f"refusing to restore into the source topic {source_topic}: its consumers would "
            "see the records again. Restore into a new topic, or pass force to do it anyway"
        )
