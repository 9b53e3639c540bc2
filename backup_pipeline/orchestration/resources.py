"""Dagster resources: the engine's settings and connections, read from the environment."""

from contextlib import closing
from dataclasses import dataclass

import dagster as dg

from backup_pipeline import accounting, backup, db, migrate
from backup_pipeline.accounting import Discrepancy
from backup_pipeline.report import PassReport
from backup_pipeline.settings import Settings, load_settings
from backup_pipeline.status import PartitionStatus, snapshot, topic_status
from backup_pipeline.topics import TopicSpec
from backup_pipeline.versions import VersionState, version_state


@dataclass(frozen=True)
class RunOutcome:
    report: PassReport
    discrepancies: list[Discrepancy]
    quarantined_total: int  # all quarantined records of this (topic, version)
    lost_total: int  # all offsets lost to retention for this (topic, version)


@dataclass(frozen=True)
class TopicView:
    """What a sensor tick needs: the version situation and the serving version's lag."""

    state: VersionState
    serving: list[PartitionStatus]

    @property
    def serving_lag(self) -> int:
        return sum(p.lag for p in self.serving)


class BackupEngine(dg.ConfigurableResource):
    """Runs engine passes. Connection settings come from the environment (see README), so
    no secret ever appears in run config, metadata or the UI."""

    # A Dagster run waits this long for the engine's writer lock (held by a CLI pass, say).
    lock_wait_seconds: float = 60.0

    def settings(self) -> Settings:
        return load_settings()

    def run_backup(
        self, spec: TopicSpec, version: int | None, max_records: int | None
    ) -> RunOutcome:
        settings = self.settings()
        if settings.backup_auto_migrate:
            migrate.migrate(settings)
        report = backup.backup_topic(
            settings,
            spec,
            version=version,
            max_records=max_records,
            lock_wait_seconds=self.lock_wait_seconds,
        )
        with closing(db.connect(settings, autocommit=True)) as conn:
            discrepancies = accounting.check_pass(conn, report)
            quarantined, lost = conn.execute(
                """
                SELECT (SELECT count(*) FROM backup_quarantine
                        WHERE version = %(v)s AND kafka_topic = %(t)s),
                       (SELECT coalesce(sum(last_lost_offset - first_lost_offset + 1), 0)
                        FROM backup_gaps
                        WHERE version = %(v)s AND kafka_topic = %(t)s AND kind = 'retention')
                """,
                {"v": report.version, "t": report.topic},
            ).fetchone() or (0, 0)
        return RunOutcome(report, discrepancies, int(quarantined), int(lost))

    def topic_view(self, spec: TopicSpec, timeout: float = 10.0) -> TopicView:
        settings = self.settings()
        consumer = backup.open_consumer(settings)
        try:
            with closing(db.connect(settings, autocommit=True)) as conn:
                topic = settings.topic(spec)
                # One look at Kafka per tick: the partitions, then each one's offsets.
                marks = snapshot(consumer, topic, timeout)
                state = version_state(
                    conn,
                    consumer,
                    topic,
                    settings.backup_version,
                    caught_up_max_lag=settings.backup_caught_up_max_lag,
                    timeout=timeout,
                    snapshot=marks,
                )
                serving = topic_status(conn, consumer, spec, topic, state.serving, timeout, marks)
                return TopicView(state, serving)
        finally:
            consumer.close()
