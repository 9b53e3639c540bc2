"""The topic a restore writes into: its name, creation, and the checks before writing."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from confluent_kafka import Consumer, KafkaException
from confluent_kafka.admin import AdminClient

from backup_pipeline import source
from backup_pipeline.errors import BackupError, KafkaUnavailableError
from backup_pipeline.topics_admin import create_topics


class RestoreError(BackupError):
    """A restore was refused or could not go on; the message says why and what to do."""


def default_target(source_topic: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{source_topic}.restored-{stamp}"


def partition_count(admin: AdminClient, topic: str, timeout: float) -> int | None:
    """The topic's partition count, or None when it does not exist."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailableError(f"cannot list topics: {exc}") from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        return None
    return len(found.partitions)


def ensure_topic(admin: AdminClient, topic: str, partitions: int, timeout: float) -> bool:
    """Create ``topic`` with ``partitions`` when missing; True when it was created."""
    if partition_count(admin, topic, timeout) is not None:
        return False
    created = bool(create_topics(admin, [topic], partitions, timeout=max(timeout, 30.0)))
    # Metadata reaches every client a little after the creation is acknowledged.
    deadline = time.monotonic() + 30
    while (partition_count(admin, topic, timeout) or 0) < partitions:
        if time.monotonic() > deadline:
            raise KafkaUnavailableError(f"created topic {topic} never showed in metadata")
        time.sleep(0.2)
    return created


def end_offsets(
    consumer: Consumer, topic: str, timeout: float, settle_seconds: float = 30.0
) -> dict[int, source.Watermarks]:
    """Watermarks of every partition; a new topic's leaders may take a moment to settle."""
    deadline = time.monotonic() + settle_seconds
    while True:
        try:
            return {
                p: source.watermarks(consumer, topic, p, timeout)
                for p in source.partitions(consumer, topic, timeout)
            }
        except KafkaUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def check_writable(
    source_topic: str,
    target_topic: str,
    marks: dict[int, source.Watermarks],
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
