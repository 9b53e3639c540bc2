"""Keep Dagster's own database bounded: a daily job deletes old runless asset events.

The SQL lives in ``backup_pipeline.dagster_storage``; this is the op, job and schedule that
put it in the UI (runnable by hand from the Launchpad, with a retention override) and the
check that it runs against the Dagster and the PostgreSQL storage it was written for.
Runs themselves are purged by ``purge_old_runs_job`` (retention.py), as before.
"""

from contextlib import closing
from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
from pydantic import Field

from backup_pipeline import dagster_storage
from backup_pipeline.errors import BackupError
from backup_pipeline.settings import env_setting


class PruneConfig(dg.Config):
    retention_days: float | None = Field(
        default=None,
        description="Delete runless asset events older than this many days (fractions "
        "allowed); empty: BACKUP_ASSET_EVENT_RETENTION_DAYS.",
    )


def instance_database_url(instance: dg.DagsterInstance) -> str:
    """The PostgreSQL URL of the instance's event log, which must also hold its runs (the
    deletes join the two): dagster.yaml's ``storage: postgres``."""
    events, runs = instance.event_log_storage, instance.run_storage
    if not (
        isinstance(events, PostgresEventLogStorage)
        and isinstance(runs, PostgresRunStorage)
        and events.postgres_url == runs.postgres_url
    ):
        raise dg.Failure(
            description="storage maintenance needs Dagster's runs and event log in one "
            "PostgreSQL database (dagster.yaml `storage: postgres:`); this instance stores "
            f"them with {type(events).__name__} and {type(runs).__name__}"
        )
    return events.postgres_url


@dg.op(
    description="Delete runless asset observations and check evaluations (with their "
    "asset_check_executions and asset_event_tags rows) older than the retention, and check "
    "executions of runs purged since; the newest per asset and per check always stay."
)
def prune_asset_events(context: dg.OpExecutionContext, config: PruneConfig) -> dict[str, int]:
    try:
        dagster_storage.check_dagster_version(dagster_storage.installed_dagster_version())
        days = config.retention_days
        if days is None:
            days = env_setting("backup_asset_event_retention_days", float)
        if days <= 0:
            raise dg.Failure(description=f"retention_days must be above 0, not {days}")
        # Dagster's timestamp columns hold UTC without a time zone.
        cutoff = (datetime.now(UTC) - timedelta(days=days)).replace(tzinfo=None)
        url = instance_database_url(context.instance)
        with closing(dagster_storage.connect(url)) as conn:
            counts = dagster_storage.prune_asset_events(conn, cutoff)
            sizes = dagster_storage.table_sizes(conn)
    except BackupError as exc:
        raise dg.Failure(description=str(exc)) from None
    if counts is None:
        context.log.warning("another storage maintenance run is deleting now; nothing done")
        return {}
    context.log.info(
        f"deleted runless asset events from before {cutoff:%Y-%m-%d %H:%M:%S} UTC: "
        f"event_logs {counts.event_logs} ({counts.observations} observations, "
        f"{counts.check_evaluations} check evaluations), asset_check_executions "
        f"{counts.asset_check_executions} ({counts.run_check_executions} of purged runs), "
        f"asset_event_tags {counts.event_tags}"
    )
    context.add_output_metadata(
        {
            "cutoff_utc": dg.MetadataValue.text(f"{cutoff:%Y-%m-%d %H:%M:%S}"),
            "retention_days": days,
            "deleted_event_logs": counts.event_logs,
            "deleted_asset_check_executions": counts.asset_check_executions,
            "deleted_asset_event_tags": counts.event_tags,
            **{f"deleted_{kind}": n for kind, n in counts.as_dict().items()},
            **{f"{table}_rows": size.rows for table, size in sizes.items()},
            **{f"{table}_mb": round(size.bytes / 1e6, 1) for table, size in sizes.items()},
        }
    )
    return counts.as_dict()


@dg.job(
    executor_def=dg.in_process_executor,
    description="Keep Dagster's database bounded: delete runless asset events older than "
    "BACKUP_ASSET_EVENT_RETENTION_DAYS (the newest per asset and check stay). Safe to run "
    "by hand at any time.",
)
def dagster_storage_maintenance_job() -> None:
    prune_asset_events()


dagster_storage_maintenance_schedule = dg.ScheduleDefinition(
    job=dagster_storage_maintenance_job,
    # After purge_old_runs_job (03:17), so the check executions of the runs it deleted go too.
    cron_schedule="37 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
