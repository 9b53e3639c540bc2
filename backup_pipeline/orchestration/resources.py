"""Dagster resources: the engine's settings and connections, read from the environment."""

from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime

import dagster as dg
import psycopg
from psycopg import sql

from backup_pipeline import acknowledge, db, migrate, versions
from backup_pipeline.acknowledge import Unacknowledged
from backup_pipeline.backup import accounting, pass_, run
from backup_pipeline.backup.accounting import Discrepancy
from backup_pipeline.backup.report import PassReport
from backup_pipeline.kafka import client
from backup_pipeline.settings import Settings, load_settings
from backup_pipeline.status import PartitionStatus, snapshot, topic_status
from backup_pipeline.topics import TopicSpec
from backup_pipeline.versions import VersionState


@dataclass(frozen=True)
class TopicView:
    """What a sensor tick needs: the versions, the serving version's lag, what waits for a
    person (unacknowledged quarantine and gaps)."""

    state: VersionState
    serving: list[PartitionStatus]
    unacknowledged: Unacknowledged

    @property
    def serving_lag(self) -> int:
        return sum(p.lag for p in self.serving)


class BackupEngine(dg.ConfigurableResource):
    """Runs engine passes. Connection settings come from the environment (see README), so
    no secret ever appears in run config, metadata or the UI."""

    # A Dagster run waits this long for the engine's writer lock. Waiting asks the holder
    # (a follow run) to hand over, which it does after its current pass.
    lock_wait_seconds: float = 60.0

    def settings(self) -> Settings:
        return load_settings()

    def prepare(self) -> Settings:
        settings = self.settings()
        if settings.backup_auto_migrate:
            migrate.migrate(settings)
        return settings

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        with closing(db.connect(self.settings(), autocommit=True)) as conn:
            yield conn

    def write_version(self, spec: TopicSpec, requested: int | None) -> tuple[int, int | None]:
        """(version to write, serving version): requested or the serving one; a retired
        version is refused (versions.resolve_write_version)."""
        with self.connection() as conn:
            version = versions.resolve_write_version(
                conn, spec.table, requested, allow_retired=False
            )
            return version, versions.serving_version(conn, spec.table)

    def run_backup(self, spec: TopicSpec, version: int, max_records: int | None) -> PassReport:
        return run.backup_topic(
            self.settings(),
            spec,
            version=version,
            max_records=max_records,
            lock_wait_seconds=self.lock_wait_seconds,
        )

    def follow(
        self,
        spec: TopicSpec,
        version: int,
        seconds: float,
        outcome: pass_.FollowOutcome,
        should_stop: Callable[[], bool],
    ) -> Iterator[PassReport]:
        return run.follow_topic(
            self.settings(),
            spec,
            outcome,
            version=version,
            seconds=seconds,
            should_stop=should_stop,
            lock_wait_seconds=self.lock_wait_seconds,
        )

    def topic_view(self, spec: TopicSpec, timeout: float = 10.0) -> TopicView:
        try:
            return self._topic_view(spec, timeout)
        except psycopg.errors.UndefinedTable:
            # A new database: the sensor comes first, so it migrates (as runs do).
            if not self.settings().backup_auto_migrate:
                raise
            self.prepare()
            return self._topic_view(spec, timeout)

    def _topic_view(self, spec: TopicSpec, timeout: float) -> TopicView:
        settings = self.settings()
        consumer = client.open_consumer(settings)
        try:
            with closing(db.connect(settings, autocommit=True)) as conn:
                topic = settings.topic(spec)
                # One look at Kafka per tick: the partitions, then each one's offsets.
                marks = snapshot(consumer, topic, timeout)
                state = versions.reconcile(
                    conn,
                    spec,
                    topic,
                    settings.backup_version,
                    marks,
                    caught_up_max_lag=settings.backup_caught_up_max_lag,
                    allow_downgrade=settings.backup_allow_downgrade,
                )
                serving = topic_status(conn, consumer, spec, topic, state.serving, timeout, marks)
                unack = acknowledge.unacknowledged(conn, topic, state.serving)
                return TopicView(state, serving, unack)
        finally:
            consumer.close()


def accounted(conn: psycopg.Connection, report: PassReport) -> list[Discrepancy]:
    return accounting.check_pass(conn, report)


def rows_stored(conn: psycopg.Connection, table: str, version: int) -> int:
    """Rows of one version (an index-only scan of the primary key; once per run)."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE version = %s").format(sql.Identifier(table)),
        (version,),
    ).fetchone()
    return int(row[0]) if row else 0


def newest_record_time(conn: psycopg.Connection, report: PassReport) -> datetime | None:
    """Kafka timestamp of the newest record a pass stored (only the offsets it passed)."""
    newest: datetime | None = None
    for part in report.partitions:
        if part.hwm_after <= part.hwm_before:
            continue
        row = conn.execute(
            sql.SQL(
                "SELECT max(kafka_timestamp) FROM {} WHERE version = %s AND kafka_partition = %s "
                "AND kafka_offset BETWEEN %s AND %s"
            ).format(sql.Identifier(report.table)),
            (report.version, part.partition, part.hwm_before + 1, part.hwm_after),
        ).fetchone()
        if row and row[0] is not None and (newest is None or row[0] > newest):
            newest = row[0]
    return newest
