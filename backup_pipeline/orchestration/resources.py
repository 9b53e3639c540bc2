"""Dagster resources: the engine's settings and connections, read from the environment."""

from __future__ import annotations

from contextlib import closing

import dagster as dg
from confluent_kafka import Consumer

from backup_pipeline import backup, db, migrate
from backup_pipeline.report import PassReport
from backup_pipeline.settings import Settings, load_settings
from backup_pipeline.status import PartitionStatus, topic_status
from backup_pipeline.topics import TopicSpec


class BackupEngine(dg.ConfigurableResource):
    """Runs engine passes. Connection settings come from the environment (see README),
    so no secret ever appears in run config or in the UI."""

    # Overrides for one run (e.g. a re-run with a smaller cap); None = environment value.
    max_records_per_pass: int | None = None

    def settings(self) -> Settings:
        return load_settings()

    def run_pass(self, spec: TopicSpec) -> PassReport:
        settings = self.settings()
        if settings.backup_auto_migrate:
            migrate.migrate(settings)
        return backup.backup_topic(settings, spec, max_records=self.max_records_per_pass)

    def status(self, spec: TopicSpec, timeout: float = 10.0) -> list[PartitionStatus]:
        settings = self.settings()
        consumer = Consumer(backup.consumer_config(settings))
        try:
            with closing(db.connect(settings, autocommit=True)) as conn:
                return topic_status(
                    conn, consumer, spec, settings.topic(spec), settings.backup_version, timeout
                )
        finally:
            consumer.close()
