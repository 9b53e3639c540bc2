"""Restore and verify from the Dagster UI: a restore job and a scheduled verify check."""

import dagster as dg

from backup_pipeline.orchestration.assets import topic_asset_key
from backup_pipeline.positions import plan as positions
from backup_pipeline.progress import LogProgress
from backup_pipeline.restore.report import RestoreReport
from backup_pipeline.restore.run import RestoreRequest, restore, resume
from backup_pipeline.selection import Selection, restore_time
from backup_pipeline.settings import env_setting, load_settings
from backup_pipeline.topics import TOPICS, TopicSpec
from backup_pipeline.verify.compare import verify

VERIFY_CHECK = "matches_topic"


def verify_sample() -> int:
    """Offsets compared per partition by the scheduled check (read at run time)."""
    return env_setting("backup_verify_sample", int)


class RestoreConfig(dg.Config):
    """The same choices as `backup-pipeline restore`."""

    table: str
    version: int | None = None  # None: the serving version (backup_versions)
    target_topic: str | None = None  # None: <topic>.restored-<UTC timestamp>
    partitions: list[int] | None = None
    # {"0": [first, last]}: inclusive offsets per partition; null for an open end.
    offsets: dict[str, list[int | None]] | None = None
    since: str | None = None  # ISO-8601 (naive = UTC, as in the CLI), inclusive
    until: str | None = None  # ISO-8601 (naive = UTC), exclusive
    record_keys: list[int] | None = None  # LongSerializer keys
    arbeidssoeker_ids: list[int] | None = None
    include_quarantined: bool = False
    origin_headers: bool = True
    force: bool = False
    # A new target copies the source's retention too (default: it keeps every record).
    keep_source_retention: bool = False
    # Write even where the target's retention or compaction would drop restored records.
    allow_retention_loss: bool = False
    # Write into an existing LogAppendTime target (its broker stamps records anew).
    accept_new_timestamps: bool = False
    resume_run_id: int | None = None  # carry on an interrupted restore run
    # Consumer-group positions once the restore completes: ["all"] or group names; as of
    # the latest snapshot or as_of (ISO-8601, naive = UTC); committed only with
    # apply_positions (the plan is in the run's log and metadata either way).
    consumer_groups: list[str] | None = None
    as_of: str | None = None
    apply_positions: bool = False


def _metadata(report: RestoreReport) -> dict[str, dg.MetadataValue]:
    return {
        "restore_run_id": dg.MetadataValue.int(report.run_id),
        "status": dg.MetadataValue.text(report.status),
        "target_topic": dg.MetadataValue.text(report.target_topic),
        "records_restored": dg.MetadataValue.int(report.restored),
        "not_restored_exactly": dg.MetadataValue.int(report.not_exact),
        "from_quarantine": dg.MetadataValue.int(report.quarantined),
        "already_in_target": dg.MetadataValue.int(report.skipped),
        "duration_seconds": dg.MetadataValue.float(round(report.duration_seconds, 3)),
        "target_config": dg.MetadataValue.text(report.target_config),
        "by_partition": dg.MetadataValue.json({str(p): n for p, n in report.by_partition.items()}),
    }


@dg.op(description="Write backed-up records of one table and version back to Kafka.")
def restore_topic(context: dg.OpExecutionContext, config: RestoreConfig) -> dg.Output[int]:
    settings = load_settings()
    # A line per partition every 10%, with records/s and the time left: progress in the
    # run's log without flooding it.
    progress = LogProgress(context.log, "restore")
    if config.resume_run_id is not None:
        report = resume(
            settings,
            config.resume_run_id,
            progress=progress,
            allow_retention_loss=config.allow_retention_loss,
            accept_new_timestamps=config.accept_new_timestamps,
        )
    else:
        request = RestoreRequest(
            table=config.table,
            version=config.version,
            target_topic=config.target_topic,
            selection=Selection.of(
                partitions=config.partitions,
                offsets=config.offsets,
                since=config.since,
                until=config.until,
                record_keys=config.record_keys or (),
                arbeidssoeker_ids=config.arbeidssoeker_ids,
                include_quarantined=config.include_quarantined,
            ),
            origin_headers=config.origin_headers,
            force=config.force,
            keep_source_retention=config.keep_source_retention,
            allow_retention_loss=config.allow_retention_loss,
            accept_new_timestamps=config.accept_new_timestamps,
        )
        # restore() logs its summary through the engine's logger, which is in the run's log.
        report = restore(settings, request, progress=progress)
    metadata = _metadata(report)
    if config.consumer_groups and report.status == "completed":
        metadata.update(_positions(context, config, report.run_id))
    return dg.Output(report.restored, metadata=metadata)


def _positions(
    context: dg.OpExecutionContext, config: RestoreConfig, run_id: int
) -> dict[str, dg.MetadataValue]:
    settings = load_settings()
    groups = positions.parse_groups(",".join(config.consumer_groups or []))
    as_of = restore_time(config.as_of, "as_of") if config.as_of else None
    planned = positions.plan(settings, run_id, groups, as_of)
    context.log.info(planned.text())
    committed = positions.apply(settings, planned) if config.apply_positions else 0
    if config.apply_positions:
        context.log.info(f"committed {committed} partition positions on {planned.target_topic}")
    return {
        "positions_plan": dg.MetadataValue.md(f"```\n{planned.text()}\n```"),
        "positions_committed": dg.MetadataValue.int(committed),
    }


@dg.job(
    description="Restore a backed-up topic (or part of it) into Kafka; configure it in the "
    "launchpad like `backup-pipeline restore`."
)
def restore_job() -> None:
    restore_topic()


def verify_check(spec: TopicSpec) -> dg.AssetChecksDefinition:
    # On the topic's asset, not the table's: the Materialize button of a table runs every
    # check of the table, and this one reads Kafka offset by offset (minutes, not seconds).
    # It runs on its schedule, or by hand from the topic's page.
    @dg.asset_check(
        asset=topic_asset_key(spec),
        name=VERIFY_CHECK,
        description=f"Compares a random sample of offsets per partition (BACKUP_VERIFY_SAMPLE) "
        f"of the live topic with its backup in {spec.table}: key, value and headers must be "
        "identical. A topic restored under its own name is compared through its restore's "
        "offset map.",
        blocking=False,
    )
    def _verify() -> dg.AssetCheckResult:
        report = verify(load_settings(), spec.table, sample=verify_sample())
        findings = report.findings()
        return dg.AssetCheckResult(
            passed=report.ok,
            metadata={
                "compared": report.compared,
                "missing": len(findings["missing"]),
                "extra": len(findings["extra"]),
                "different": len(findings["different"]),
                # A topic restored under its own name: backed-up records its restore left
                # out (quarantined ones, by default), which are not differences.
                "excluded_by_restore": sum(p.excluded for p in report.partitions),
                "summary": dg.MetadataValue.md(f"```\n{report.summary()}\n```"),
            },
        )

    return _verify


verify_job = dg.define_asset_job(
    "verify_backups",
    selection=dg.AssetSelection.checks(
        *(dg.AssetCheckKey(topic_asset_key(spec), VERIFY_CHECK) for spec in TOPICS)
    ),
    executor_def=dg.in_process_executor,
    description="Sample-verify every backup table against its live topic.",
)
verify_schedule = dg.ScheduleDefinition(
    job=verify_job, cron_schedule="40 2 * * *", default_status=dg.DefaultScheduleStatus.RUNNING
)
