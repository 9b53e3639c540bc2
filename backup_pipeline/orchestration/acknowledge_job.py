"""Acknowledge reviewed quarantined records or lost offsets from the Dagster UI (Launchpad),
the same as ``backup-pipeline acknowledge``: recorded with who and why, nothing deleted.
The health checks count only what is not acknowledged, so they settle at the next tick."""

from contextlib import closing
from typing import Literal

import dagster as dg

from backup_pipeline import acknowledge, db, versions
from backup_pipeline.orchestration.resources import BackupEngine
from backup_pipeline.topics import spec_for_table


class AcknowledgeConfig(dg.Config):
    table: str
    what: Literal["quarantine", "gaps"]
    by: str  # who reviewed them
    note: str  # what was found or done
    up_to_id: int | None = None  # only rows with id <= this (the ones reviewed)
    version: int | None = None  # None: the serving version


@dg.op
def acknowledge_rows(
    context: dg.OpExecutionContext, config: AcknowledgeConfig, engine: BackupEngine
) -> None:
    settings = engine.settings()
    spec = spec_for_table(config.table)
    topic = settings.topic(spec)
    with closing(db.connect(settings, autocommit=True)) as conn:
        version = versions.resolve_read_version(conn, spec.table, config.version)
        done = acknowledge.acknowledge_rows(
            conn, spec.table, topic, version, config.what, config.by, config.note, config.up_to_id
        )
        left = acknowledge.unacknowledged(conn, topic, version)
    context.log.info(
        f"acknowledged {done.count} {config.what} rows of {spec.table} version {version} "
        f"by {config.by}: {config.note}; now {left.describe()}"
    )
    context.instance.add_run_tags(
        context.run_id,
        {"backup_pipeline/table": spec.table, "backup_pipeline/acknowledged": str(done.count)},
    )


@dg.job(
    executor_def=dg.in_process_executor,
    description="Acknowledge reviewed quarantined records or lost offsets of a table "
    "(recorded, never deleted); the health checks settle at the next sensor tick.",
)
def acknowledge_job() -> None:
    acknowledge_rows()
