"""Restore: write backed-up records of one version back to Kafka, exactly, resumably.

Every record goes to its original partition with its key, value, headers (in order) and
timestamp, produced by an idempotent producer with ``acks=all``. Partitions are restored
one after the other in source offset order; with idempotence librdkafka keeps a
partition's order through retries, so the target offsets of a run are contiguous per
partition and the delivery reports arrive in that order. Each report extends the
partition's checkpoint; checkpoints and offset map rows are saved together every
``checkpoint_every`` records.

A crash can still fall between Kafka's acknowledgement and the save. A resumed run
therefore first reads the target partition from its saved ``next_target_offset`` to its
end: each record found there is the next source record in order (checked against its
origin headers when the run writes them), is entered in the map, and is not produced
again. So no record is ever written twice.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack, closing
from dataclasses import dataclass, field

import psycopg
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from backup_pipeline import db, readback, versions
from backup_pipeline.errors import RestoreError
from backup_pipeline.kafka.config import admin_config, consumer_config, producer_config
from backup_pipeline.progress import ProgressCallback
from backup_pipeline.readback import resolve_spec
from backup_pipeline.restore import bookkeeping, target_topic
from backup_pipeline.restore.bookkeeping import RunRow
from backup_pipeline.restore.partitions import restore_partitions
from backup_pipeline.restore.report import RestoreReport
from backup_pipeline.selection import Selection
from backup_pipeline.settings import Settings
from backup_pipeline.topics import ValueFormat, spec_for_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RestoreRequest:
    table: str | None = None
    source_topic: str | None = None  # default: the table's topic from settings
    version: int | None = None  # default: the serving version (versions.py)
    target_topic: str | None = None  # default: <source topic>.restored-<UTC timestamp>
    selection: Selection = field(default_factory=Selection)
    origin_headers: bool = True
    force: bool = False
    # A new target copies the source's retention too, instead of keeping every record.
    keep_source_retention: bool = False
    # Write even where the target's retention or compaction would drop restored records.
    allow_retention_loss: bool = False
    # Write into an existing LogAppendTime target, whose broker stamps records anew.
    accept_new_timestamps: bool = False


def restore(
    settings: Settings,
    request: RestoreRequest,
    *,
    progress: ProgressCallback | None = None,
    max_records: int = 0,
    checkpoint_every: int = 1000,
) -> RestoreReport:
    """Start a new restore run; ``max_records`` stops it early (resume it later)."""
    spec = resolve_spec(settings, request.table, request.source_topic)
    source_topic = request.source_topic or settings.topic(spec)
    target = request.target_topic or target_topic.default_target(source_topic)
    if spec.value_format is not ValueFormat.JSON_EVENT and request.selection.arbeidssoeker_ids:
        raise RestoreError(f"{spec.table} has no arbeidssoeker_id; filter by record key instead")
    # Before anything is created: a deleted source topic must not be re-created by accident.
    target_topic.refuse_source(source_topic, target, force=request.force)
    timeout = settings.kafka_timeout_seconds
    with ExitStack() as stack:
        conn = stack.enter_context(closing(db.connect(settings, autocommit=True)))
        # Default: the serving version (backup_versions), not BACKUP_VERSION (a target).
        version = versions.resolve_read_version(conn, spec.table, request.version)
        consumer = Consumer(consumer_config(settings))
        stack.callback(consumer.close)
        admin = AdminClient(admin_config(settings))
        source = target_topic.source_configs(admin, source_topic, timeout)
        source_configs = None if source is None else source[1]
        if source is None:  # deleted: as many partitions as the backup knows
            needed = readback.known_partitions(conn, spec, source_topic, version)
        else:
            needed = source[0]
        if needed == 0:
            raise RestoreError(f"nothing of {source_topic} version {version} is backed up")
        extents = {
            p: readback.extent(conn, spec, source_topic, version, p, request.selection)
            for p in range(needed)
            if request.selection.wants(p)
        }
        if not any(e.records for e in extents.values()):
            raise RestoreError(
                f"nothing to restore: no backed-up record of {source_topic} version {version} "
                f"matches the selection ({request.selection.describe()}); no topic was created"
            )
        new_config, described = _target_config(
            admin, request, target, source_configs, extents, timeout
        )
        created = target_topic.ensure_topic(admin, target, needed, timeout, new_config)
        if new_config is not None and not created:
            # Created by someone else between our look and our create (or not yet in the
            # metadata we asked): its own configuration decides, as for any existing target.
            described = _existing_target_config(
                admin,
                target,
                extents,
                request.allow_retention_loss,
                timeout,
                accept_new_timestamps=request.accept_new_timestamps,
            )
        marks = target_topic.end_offsets(consumer, target, timeout)
        target_topic.check_writable(source_topic, target, marks, needed, force=request.force)
        run_id = bookkeeping.create_run(
            conn,
            version=version,
            source_table=spec.table,
            source_topic=source_topic,
            target_topic=target,
            selection=request.selection,
            origin_headers=request.origin_headers,
            target_ends={p: m.end for p, m in marks.items()},
        )
        run = bookkeeping.load_run(conn, run_id)
        assert run is not None
        log.info("restore run %d: %s v%d -> %s", run_id, source_topic, version, target)
        report = _run(settings, conn, consumer, run, progress, max_records, checkpoint_every)
        report.created_topic = created
        report.target_config = described
        return report


def _target_config(
    admin: AdminClient,
    request: RestoreRequest,
    target: str,
    source_configs: dict[str, tuple[str, bool]] | None,
    extents: dict[int, readback.Extent],
    timeout: float,
) -> tuple[dict[str, str] | None, str]:
    """The configuration to create a new target with (None: it exists) and a description
    for the report, after refusing a target whose retention would drop restored records."""
    allow = request.allow_retention_loss
    if target_topic.partition_count(admin, target, timeout) is None:
        plan = target_topic.new_target_config(
            source_configs, keep_source_retention=request.keep_source_retention
        )
        # The new topic's effective values: the cluster's (seen on the source) + its own.
        effective = {k: v for k, (v, _) in (source_configs or {}).items()} | plan.configs
        problem = target_topic.check_retention(target, effective, extents, allow=allow)
        return plan.configs, _noted(target, f"created with {plan.describe()}", problem)
    return None, _existing_target_config(
        admin, target, extents, allow, timeout, accept_new_timestamps=request.accept_new_timestamps
    )


def _existing_target_config(
    admin: AdminClient,
    target: str,
    extents: dict[int, readback.Extent],
    allow: bool,
    timeout: float,
    *,
    accept_new_timestamps: bool = False,
) -> str:
    """Refuse an existing target that would drop restored records or their timestamps;
    describe its config."""
    effective = {k: v for k, (v, _) in target_topic.topic_configs(admin, target, timeout).items()}
    stamped = target_topic.check_timestamps(target, effective, accept=accept_new_timestamps)
    problem = target_topic.check_retention(target, effective, extents, allow=allow)
    shown = ", ".join(
        f"{k}={effective.get(k, '?')}"
        for k in [*target_topic.KEEP_EVERY_RECORD, target_topic.TIMESTAMP_TYPE]
    )
    described = f"existing topic, left as it is: {shown}"
    if stamped:
        log.warning("restore into %s: %s; written anyway as asked", target, stamped)
        described += f"; WARNING: {stamped}, written anyway (accept_new_timestamps)"
    if not problem:
        kept = "keeps every restored record"
        if not stamped:
            kept += ", with its original timestamp"
        return f"{described} ({kept})"
    return _noted(target, described, problem)


def _noted(target: str, described: str, problem: str | None) -> str:
    """``described``, with the retention problem a restore was allowed to ignore (logged)."""
    if not problem:
        return described
    log.warning("restore into %s: %s; written anyway as asked", target, problem)
    return f"{described}; WARNING: {problem}, written anyway (allow_retention_loss)"


def resume(
    settings: Settings,
    run_id: int,
    *,
    progress: ProgressCallback | None = None,
    max_records: int = 0,
    checkpoint_every: int = 1000,
    allow_retention_loss: bool = False,
    accept_new_timestamps: bool = False,
) -> RestoreReport:
    """Carry on an interrupted run with its own selection, without writing anything twice.

    The target's retention and timestamp type are checked again against what is left to
    write: they may have been changed since the run began.
    """
    with ExitStack() as stack:
        conn = stack.enter_context(closing(db.connect(settings, autocommit=True)))
        run = bookkeeping.load_run(conn, run_id)
        if run is None:
            raise RestoreError(f"there is no restore run {run_id}")
        described = ""
        admin = AdminClient(admin_config(settings))
        timeout = settings.kafka_timeout_seconds
        if run.status != "completed" and target_topic.partition_count(
            admin, run.target_topic, timeout
        ):
            spec = spec_for_table(run.source_table)
            extents = {
                p: readback.extent(
                    conn,
                    spec,
                    run.source_topic,
                    run.version,
                    p,
                    run.selection,
                    after=cp.last_source_offset,
                )
                for p, cp in bookkeeping.checkpoints(conn, run_id).items()
                if run.selection.wants(p)
            }
            described = _existing_target_config(
                admin,
                run.target_topic,
                extents,
                allow_retention_loss,
                timeout,
                accept_new_timestamps=accept_new_timestamps,
            )
        consumer = Consumer(consumer_config(settings))
        stack.callback(consumer.close)
        report = _run(settings, conn, consumer, run, progress, max_records, checkpoint_every)
        report.target_config = described
        return report


def _run(
    settings: Settings,
    conn: psycopg.Connection,
    consumer: Consumer,
    run: RunRow,
    progress: ProgressCallback | None,
    max_records: int,
    checkpoint_every: int,
) -> RestoreReport:
    started = time.monotonic()
    report = RestoreReport(
        run_id=run.run_id,
        source_table=run.source_table,
        source_topic=run.source_topic,
        target_topic=run.target_topic,
        version=run.version,
        status=run.status,
    )
    if run.status == "completed":
        return report
    if not bookkeeping.try_lock(conn, run.run_id):
        raise RestoreError(f"restore run {run.run_id} is running in another process")
    producer = Producer(producer_config(settings))
    try:
        restore_partitions(
            settings, conn, consumer, producer, run, report, progress, max_records, checkpoint_every
        )
        bookkeeping.finish(conn, run.run_id, report.status)
    except RestoreError as exc:
        bookkeeping.finish(conn, run.run_id, "failed", str(exc))
        raise
    finally:
        producer.flush(settings.kafka_timeout_seconds)
        bookkeeping.unlock(conn, run.run_id)
        report.duration_seconds = time.monotonic() - started
    log.info(report.summary())
    return report
