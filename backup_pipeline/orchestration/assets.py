"""One external asset per Kafka topic and one asset per backup table, from one factory."""

import re
from datetime import timedelta

import dagster as dg

from backup_pipeline import logs
from backup_pipeline.orchestration.jobs import RUN_CHECKS
from backup_pipeline.orchestration.resources import BackupEngine, RunOutcome
from backup_pipeline.report import PassReport
from backup_pipeline.topics import TOPICS, TopicSpec, ValueFormat

GROUP = "kafka_backup"

_COMMON_COLUMNS = {
    "version": ("smallint", "Backup version (BACKUP_VERSION); part of the primary key."),
    "kafka_partition": ("smallint", "Kafka partition the record came from."),
    "kafka_offset": ("bigint", "Kafka offset of the record within its partition."),
    "record_key": ("bigint", "Record key: Kafka LongSerializer, signed 64-bit."),
    "traceparent": ("varchar(58)", "Last W3C traceparent header; NULL if none or too long."),
    "kafka_timestamp": ("timestamptz", "Record timestamp (NULL for rows from before it was kept)."),
    "kafka_timestamp_type": ("smallint", "1 = CreateTime, 2 = LogAppendTime."),
    "headers": ("jsonb", "All headers in order: [[name, base64 value or null], ...]."),
}


def topic_asset_key(spec: TopicSpec) -> dg.AssetKey:
    return dg.AssetKey(["kafka", re.sub(r"[^A-Za-z0-9_]", "_", spec.default_topic)])


def column_schema(spec: TopicSpec) -> dg.TableSchema:
    columns = dict(_COMMON_COLUMNS)
    if spec.value_format is ValueFormat.JSON_EVENT:
        columns["arbeidssoeker_id"] = ("bigint", "arbeidssoekerId from the JSON event.")
        columns["data"] = ("jsonb", "The JSON event (hendelseType, periodeId, ...).")
        columns["kafka_value"] = ("bytea", "The value bytes exactly as produced.")
    else:
        columns["data"] = ("bytea", "The value bytes exactly as produced (Confluent-framed Avro).")
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, type_, description=description)
            for name, (type_, description) in columns.items()
        ]
    )


def topic_spec(spec: TopicSpec) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=topic_asset_key(spec),
        description=f"Kafka topic `{spec.default_topic}` (name overridable with "
        f"`{spec.topic_env_var}`). {spec.description}",
        kinds={"kafka"},
        group_name=GROUP,
        metadata={"topic": spec.default_topic, "topic_env_var": spec.topic_env_var},
    )


def pass_metadata(report: PassReport) -> dict[str, dg.MetadataValue]:
    partitions = [
        dg.TableRecord(
            {
                "partition": p.partition,
                "start_offset": p.start_offset,
                "end_offset": p.end_offset,
                "hwm_before": p.hwm_before,
                "hwm_after": p.hwm_after,
                "rows": p.rows,
                "quarantined": p.quarantined,
                "lag": p.lag,
            }
        )
        for p in report.partitions
    ]
    return {
        "topic": dg.MetadataValue.text(report.topic),
        "version": dg.MetadataValue.int(report.version),
        "rows_written": dg.MetadataValue.int(report.rows),
        "quarantined": dg.MetadataValue.int(report.quarantined),
        "warnings": dg.MetadataValue.int(report.warnings),
        "records_lost": dg.MetadataValue.int(report.lost),
        "lag_after": dg.MetadataValue.int(report.lag),
        "records_per_second": dg.MetadataValue.float(round(report.records_per_second, 1)),
        "duration_seconds": dg.MetadataValue.float(round(report.duration_seconds, 3)),
        "skipped": dg.MetadataValue.text(report.skipped or ""),
        "partitions": dg.MetadataValue.table(partitions, schema=PARTITION_SCHEMA),
    }


PARTITION_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn(name, "int")
        for name in (
            "partition",
            "start_offset",
            "end_offset",
            "hwm_before",
            "hwm_after",
            "rows",
            "quarantined",
            "lag",
        )
    ]
)


CAUGHT_UP, NO_QUARANTINE, NO_GAPS, ACCOUNTED = RUN_CHECKS

# Without new records there are no runs, so a long quiet spell is not an error by itself:
# warn after two hours without a materialization, fail after a day.
FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=24), warn_window=timedelta(hours=2)
)


class BackupRunConfig(dg.Config):
    """Per-run options; the sensors set them, a re-run from the UI may leave them empty."""

    version: int | None = None  # None: BACKUP_VERSION
    max_records: int | None = None  # None: BACKUP_MAX_RECORDS_PER_PASS


def check_specs(spec: TopicSpec) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            CAUGHT_UP,
            asset=spec.table,
            description="Lag after the run is at most BACKUP_CAUGHT_UP_MAX_LAG.",
        ),
        dg.AssetCheckSpec(
            NO_QUARANTINE,
            asset=spec.table,
            description="No record of this topic and version is in "
            "backup_quarantine (warning: they are kept raw there).",
        ),
        dg.AssetCheckSpec(
            NO_GAPS,
            asset=spec.table,
            description="Kafka deleted no offsets (retention) before they "
            "were backed up; see backup_gaps.",
        ),
        dg.AssetCheckSpec(
            ACCOUNTED,
            asset=spec.table,
            description="Every offset the run passed is a row, a quarantined "
            "record, a lost offset or an offset without a record.",
        ),
    ]


def check_results(spec: TopicSpec, outcome: RunOutcome, max_lag: int) -> list[dg.AssetCheckResult]:
    report = outcome.report
    where = (
        f"SELECT * FROM backup_quarantine WHERE kafka_topic = '{report.topic}' "
        f"AND version = {report.version}"
    )
    return [
        dg.AssetCheckResult(
            check_name=CAUGHT_UP,
            asset_key=spec.table,
            passed=report.lag <= max_lag,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"lag": report.lag, "max_lag": max_lag, "version": report.version},
        ),
        dg.AssetCheckResult(
            check_name=NO_QUARANTINE,
            asset_key=spec.table,
            passed=outcome.quarantined_total == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "quarantined": outcome.quarantined_total,
                "quarantined_this_run": report.quarantined,
                "where_to_look": dg.MetadataValue.text(where),
            },
        ),
        dg.AssetCheckResult(
            check_name=NO_GAPS,
            asset_key=spec.table,
            passed=outcome.lost_total == 0,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={"offsets_lost": outcome.lost_total, "lost_this_run": report.lost},
        ),
        dg.AssetCheckResult(
            check_name=ACCOUNTED,
            asset_key=spec.table,
            passed=not outcome.discrepancies,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "offsets_checked": sum(
                    max(0, p.hwm_after - p.hwm_before) for p in report.partitions
                ),
                "discrepancies": dg.MetadataValue.text(
                    "; ".join(d.describe() for d in outcome.discrepancies) or "none"
                ),
            },
        ),
    ]


def table_asset(spec: TopicSpec) -> dg.AssetsDefinition:
    @dg.asset(
        name=spec.table,
        deps=[topic_asset_key(spec)],
        kinds={"postgres"},
        group_name=GROUP,
        description=f"Backup of `{spec.default_topic}` in PostgreSQL table `{spec.table}`: "
        "one row per record, keyed by (version, kafka_partition, kafka_offset). "
        f"{spec.description}",
        metadata={
            "dagster/table_name": f"public.{spec.table}",
            "dagster/column_schema": column_schema(spec),
        },
        check_specs=check_specs(spec),
        freshness_policy=FRESHNESS,
    )
    def _backup(
        context: dg.AssetExecutionContext, config: BackupRunConfig, engine: BackupEngine
    ) -> dg.MaterializeResult:
        with logs.bind(run_id=context.run.run_id, table=spec.table):
            outcome = engine.run_backup(spec, config.version, config.max_records)
        report = outcome.report
        context.log.info(report.summary())
        if report.errors:
            raise dg.Failure(description="; ".join(report.errors), metadata=pass_metadata(report))
        settings = engine.settings()
        return dg.MaterializeResult(
            metadata=pass_metadata(report),
            check_results=check_results(spec, outcome, settings.backup_caught_up_max_lag),
        )

    return _backup


TOPIC_SPECS = [topic_spec(spec) for spec in TOPICS]
TABLE_ASSETS = [table_asset(spec) for spec in TOPICS]
