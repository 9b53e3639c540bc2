"""Keep the run history bounded: Dagster prunes nothing by itself, and each topic starts a
follow run per version every BACKUP_RUN_FOLLOW_SECONDS (144 a day at the default 600 s),
besides decode, verify and restore runs, each with its event log."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from backup_pipeline.settings import env_setting


@dg.op(description="Delete runs (and their event logs) older than BACKUP_RUN_RETENTION_DAYS.")
def purge_old_runs(context: dg.OpExecutionContext) -> int:
    # Read when the op runs, not at import: a bad value fails this run in one line instead
    # of the whole code location.
    days = env_setting("backup_run_retention_days", int)
    cutoff = datetime.now(UTC) - timedelta(days=days)
    deleted = 0
    while True:
        records = context.instance.get_run_records(
            filters=dg.RunsFilter(
                created_before=cutoff,
                statuses=[
                    dg.DagsterRunStatus.SUCCESS,
                    dg.DagsterRunStatus.FAILURE,
                    dg.DagsterRunStatus.CANCELED,
                ],
            ),
            limit=500,
        )
        if not records:
            break
        for record in records:
            context.instance.delete_run(record.dagster_run.run_id)
        deleted += len(records)
    context.log.info(f"deleted {deleted} runs created before {cutoff:%Y-%m-%d %H:%M} UTC")
    return deleted


@dg.job(description="Purge old runs from Dagster's run history.")
def purge_old_runs_job() -> None:
    purge_old_runs()


purge_schedule = dg.ScheduleDefinition(
    job=purge_old_runs_job,
    cron_schedule="17 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
