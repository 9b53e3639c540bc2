"""One backup pass of one topic and one version: Kafka -> PostgreSQL, exactly once."""

from __future__ import annotations

import logging
import time
from contextlib import closing
from typing import cast

import psycopg
from confluent_kafka import Consumer

from backup_pipeline import db, hwm, source, writer
from backup_pipeline.kafka_config import consumer_config
from backup_pipeline.records import KafkaMessage
from backup_pipeline.report import PartitionReport, PassReport
from backup_pipeline.settings import Settings
from backup_pipeline.topics import TopicSpec

log = logging.getLogger(__name__)


def run_pass(
    conn: psycopg.Connection,
    consumer: Consumer,
    spec: TopicSpec,
    topic: str,
    version: int,
    *,
    batch_size: int = 5000,
    batch_bytes: int = 16 * 1024 * 1024,
    max_records: int = 0,
    lock_wait_seconds: float = 0.0,
    kafka_timeout: float = 10.0,
) -> PassReport:
    """Back up ``topic`` into ``spec.table`` from each partition's HWM to its end offset.

    ``conn`` must be a dedicated autocommit connection: it holds the writer lock for the
    pass, and each batch is its own explicit transaction.
    """
    if not conn.autocommit:
        conn.autocommit = True
    started = time.monotonic()
    report = PassReport(topic=topic, table=spec.table, version=version)
    partitions = source.partitions(consumer, topic, kafka_timeout)
    # New partitions get a -1 row here, so a partition added while we run is picked up
    # by the next pass.
    hwm.ensure_rows(conn, version, topic, partitions)
    lock = hwm.WriterLock(conn, topic, version)
    if not lock.acquire(lock_wait_seconds):
        report.skipped = (
            f"another pass is backing up {topic} version {version}; this one did nothing"
        )
        log.info(report.skipped)
        return report
    try:
        _run_locked(
            conn,
            consumer,
            spec,
            topic,
            version,
            report,
            partitions,
            batch_size=batch_size,
            batch_bytes=batch_bytes,
            max_records=max_records,
            kafka_timeout=kafka_timeout,
        )
    finally:
        lock.release()
        report.duration_seconds = time.monotonic() - started
    log.info(report.summary())
    return report


def _run_locked(
    conn: psycopg.Connection,
    consumer: Consumer,
    spec: TopicSpec,
    topic: str,
    version: int,
    report: PassReport,
    partitions: list[int],
    *,
    batch_size: int,
    batch_bytes: int,
    max_records: int,
    kafka_timeout: float,
) -> None:
    hwms = hwm.read(conn, version, topic)
    plan = source.ReadPlan()
    by_partition: dict[int, PartitionReport] = {}
    for partition in partitions:
        marks = source.watermarks(consumer, topic, partition, kafka_timeout)
        before = hwms[partition]
        part = PartitionReport(
            partition=partition,
            hwm_before=before,
            log_start=marks.log_start,
            end_offset=marks.end,
            hwm_after=before,
        )
        report.partitions.append(part)
        by_partition[partition] = part
        if marks.end < before + 1:
            part.error = (
                f"end offset {marks.end} is below the HWM {before}: the topic was deleted "
                "and re-created, or truncated. Not backed up under this version; set "
                "BACKUP_VERSION to a new version to back up the topic as it is now"
            )
            log.error("%s[%d]: %s", topic, partition, part.error)
            continue
        if marks.log_start > before + 1:
            kind = "before_start" if before == hwm.NOTHING_YET else "retention"
            writer.record_gap(
                conn, version, topic, partition, before + 1, marks.log_start - 1, kind, before
            )
            part.lost_first, part.lost_last, part.lost_kind = (
                before + 1,
                marks.log_start - 1,
                kind,
            )
            part.hwm_after = marks.log_start - 1
            level = logging.ERROR if kind == "retention" else logging.WARNING
            log.log(
                level,
                "%s[%d] version %d: offsets %d..%d were deleted from Kafka before "
                "they were backed up (%s); continuing from %d",
                topic,
                partition,
                version,
                before + 1,
                marks.log_start - 1,
                kind,
                marks.log_start,
            )
        plan.start[partition] = part.hwm_after + 1
        plan.end[partition] = marks.end

    for batch in source.read(
        consumer,
        topic,
        plan,
        batch_size=batch_size,
        batch_bytes=batch_bytes,
        max_records=max_records,
    ):
        moves = {
            p: (by_partition[p].hwm_after, new)
            for p, new in batch.hwms.items()
            if new != by_partition[p].hwm_after
        }
        mapped = writer.write_batch(
            conn, spec, topic, version, cast(list[KafkaMessage], batch.messages), moves
        )
        for partition, (_, new) in moves.items():
            by_partition[partition].hwm_after = new
        for partition, (rows, quarantined, warnings) in mapped.per_partition.items():
            part = by_partition[partition]
            part.rows += rows
            part.quarantined += quarantined
            part.warnings += warnings
        for partition, count in batch.no_record.items():
            by_partition[partition].no_record += count
        report.batches += 1
        report.bytes_read += batch.size_bytes


def open_consumer(settings: Settings) -> Consumer:
    return Consumer(consumer_config(settings))


def backup_topic(
    settings: Settings,
    spec: TopicSpec,
    *,
    version: int | None = None,
    max_records: int | None = None,
    lock_wait_seconds: float = 0.0,
) -> PassReport:
    """One pass with connections made from settings, closed afterwards.

    ``version`` defaults to BACKUP_VERSION; the Dagster layer passes the previous version
    while a new one is still being re-ingested.
    """
    consumer = open_consumer(settings)
    try:
        with closing(db.connect(settings, autocommit=True)) as conn:
            return run_pass(
                conn,
                consumer,
                spec,
                settings.topic(spec),
                settings.backup_version if version is None else version,
                batch_size=settings.backup_batch_size,
                batch_bytes=settings.backup_batch_bytes,
                max_records=(
                    settings.backup_max_records_per_pass if max_records is None else max_records
                ),
                lock_wait_seconds=lock_wait_seconds,
                kafka_timeout=settings.kafka_timeout_seconds,
            )
    finally:
        consumer.close()
