"""The decoded Avro tables as Dagster assets downstream of the raw tables, for analysts.

One multi-asset (both decoded tables, one follow run), its check, a job and a sensor that
keeps one follow run alive, like the raw tables' sensors do. The run decodes on its own
PostgreSQL connection from committed raw rows only: the raw backup's runs never wait for it.
"""

import time
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import dagster as dg

from backup_pipeline import db
from backup_pipeline.decode import run, undecodable
from backup_pipeline.decode.catalog import AVRO_TABLES, AvroTable
from backup_pipeline.decode.report import DecodeReport
from backup_pipeline.errors import ConfigError
from backup_pipeline.orchestration.resources import BackupEngine
from backup_pipeline.settings import Settings, load_settings

GROUP = "analysts"
JOB = "decode_avro"
CHECK = "undecodable_reviewed"


def column_schema(table: AvroTable) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                c.name,
                c.pg_type,
                description=c.description
                + (f" (Avro field `{c.avro_path}`)" if c.avro_path else ""),
            )
            for c in table.columns
        ]
    )


def column_lineage(table: AvroTable) -> dg.TableColumnLineage:
    """Key columns come from the raw table's key columns; every other column (schema id
    and decoded fields) is read from the raw ``data`` bytes."""
    raw = dg.AssetKey(table.raw_table)
    return dg.TableColumnLineage(
        deps_by_column={
            c.name: [
                dg.TableColumnDep(
                    asset_key=raw,
                    column_name=c.name
                    if c.name in ("version", "kafka_partition", "kafka_offset")
                    else "data",
                )
            ]
            for c in table.columns
        }
    )


def description(table: AvroTable) -> str:
    example = table.value_columns[0].name
    return (
        f"{table.description} Decoded from `{table.raw_table}.data` (Confluent-framed Avro, "
        f"record `{table.record_name}`) with the writer schema of each value's schema id, kept "
        "in `backup_schemas`.\n\n"
        f"Query `{table.current_view}` for the serving version, e.g. "
        f"`SELECT {example}, count(*) FROM {table.current_view} GROUP BY 1`; "
        f"`{table.decoded_table}` holds every version. Back to the exact bytes: "
        f"`JOIN {table.raw_table} USING (version, kafka_partition, kafka_offset)`. Rows that "
        "could not be decoded: `SELECT * FROM backup_undecodable WHERE table_name = "
        f"'{table.raw_table}' AND resolved_at IS NULL`. See docs/decoded-tables.md."
    )


def decoded_spec(table: AvroTable) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=table.decoded_table,
        deps=[dg.AssetKey(table.raw_table)],
        description=description(table),
        kinds={"postgres"},
        group_name=GROUP,
        skippable=True,
        metadata={
            "dagster/table_name": f"public.{table.decoded_table}",
            "dagster/column_schema": column_schema(table),
            "dagster/column_lineage": column_lineage(table),
            "current_view": f"public.{table.current_view}",
        },
    )


class DecodeRunConfig(dg.Config):
    """The sensor sets follow_seconds; the Materialize button decodes once, to the end."""

    follow_seconds: float = 0.0
    retry_undecodable: bool = False


def _metadata(settings: Settings, table: AvroTable, window: DecodeReport) -> dict[str, Any]:
    with closing(db.connect(settings)) as conn:
        st = undecodable.status(conn, table)
    return {
        "dagster/row_count": dg.MetadataValue.int(st.decoded_rows),
        "decoded_in_run_window": dg.MetadataValue.int(window.decoded + window.redecoded),
        "undecodable": dg.MetadataValue.int(st.open_undecodable),
        "undecodable_unacknowledged": dg.MetadataValue.int(st.unacknowledged),
        "undecodable_by_reason": dg.MetadataValue.json(st.by_kind),
        "schema_ids_seen": dg.MetadataValue.text(", ".join(map(str, st.schema_ids)) or "none"),
    }


def _evaluation(settings: Settings, table: AvroTable) -> dg.AssetCheckEvaluation:
    with closing(db.connect(settings)) as conn:
        st = undecodable.status(conn, table)
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(table.decoded_table),
        check_name=CHECK,
        passed=st.unacknowledged == 0,
        metadata={
            "unacknowledged": dg.MetadataValue.int(st.unacknowledged),
            "open": dg.MetadataValue.int(st.open_undecodable),
            "by_reason": dg.MetadataValue.json(st.by_kind),
        },
        description=None
        if st.unacknowledged == 0
        else f"{st.unacknowledged} undecodable row(s) not reviewed: see backup_undecodable; "
        "`backup-pipeline decode --retry-undecodable` once their schema is known, or "
        "`backup-pipeline decode --acknowledge-up-to ID --by NAME --note WHY`",
    )


@dg.multi_asset(
    name="decoded_avro",
    specs=[decoded_spec(t) for t in AVRO_TABLES],
    can_subset=True,
)
def decoded_avro(
    context: dg.AssetExecutionContext, config: DecodeRunConfig, engine: BackupEngine
) -> Iterator[dg.AssetMaterialization | dg.MaterializeResult]:
    settings = engine.prepare()
    tables = [t for t in AVRO_TABLES if dg.AssetKey(t.decoded_table) in context.selected_asset_keys]
    windows = {t.raw_table: DecodeReport(t.raw_table) for t in tables}
    if config.follow_seconds > 0:
        rounds: Iterator[list[DecodeReport]] = run.follow_iter(
            settings,
            tables,
            seconds=config.follow_seconds,
            poll_seconds=settings.backup_follow_poll_seconds,
        )
    else:
        rounds = iter([run.decode_once(settings, tables, retry_all=config.retry_undecodable)])
    reported_at: float | None = None
    for reports in rounds:
        for report in reports:
            run.add(windows[report.table], report)
        now = time.monotonic()
        due = reported_at is None or now - reported_at >= settings.backup_materialize_every_seconds
        if config.follow_seconds > 0 and due:
            for table in tables:
                window = windows[table.raw_table]
                if window.raw_rows or window.redecoded:
                    yield dg.AssetMaterialization(
                        asset_key=table.decoded_table, metadata=_metadata(settings, table, window)
                    )
                    # Reported from outside the run so the asset page shows it with the
                    # materialization it judges (as the raw assets do, assets._report).
                    context.instance.report_runless_asset_event(_evaluation(settings, table))
                    windows[table.raw_table] = DecodeReport(table.raw_table)
                    reported_at = now
    for table in tables:
        yield dg.MaterializeResult(
            asset_key=table.decoded_table,
            metadata=_metadata(settings, table, windows[table.raw_table]),
        )
        # Judged again at each run's end, so an acknowledgement (CLI) turns the check green
        # within one follow run even when no new rows arrive.
        if config.follow_seconds > 0:
            context.instance.report_runless_asset_event(_evaluation(settings, table))


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(
            CHECK,
            asset=t.decoded_table,
            description="Fails while a raw row that could not be decoded is neither decoded "
            "since nor acknowledged by a person (backup_undecodable).",
        )
        for t in AVRO_TABLES
    ],
    can_subset=True,
)
def decoded_checks(
    context: dg.AssetCheckExecutionContext, engine: BackupEngine
) -> Iterator[dg.AssetCheckResult]:
    settings = engine.settings()
    for table in AVRO_TABLES:
        key = dg.AssetCheckKey(dg.AssetKey(table.decoded_table), CHECK)
        if key not in context.selected_asset_check_keys:
            continue
        evaluation = _evaluation(settings, table)
        yield dg.AssetCheckResult(
            asset_key=evaluation.asset_key,
            check_name=CHECK,
            passed=evaluation.passed,
            metadata=evaluation.metadata,
            description=evaluation.description,
        )


decode_job = dg.define_asset_job(
    name=JOB,
    selection=dg.AssetSelection.assets(*(t.decoded_table for t in AVRO_TABLES)).without_checks(),
    executor_def=dg.in_process_executor,
    description="Decode new raw Avro rows into the decoded tables, following for "
    "BACKUP_RUN_FOLLOW_SECONDS (started by decode_avro_sensor).",
)

_ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _interval() -> int:
    try:
        return load_settings().sensor_interval_seconds
    except ConfigError:
        return 30


@dg.sensor(
    name="decode_avro_sensor",
    job=decode_job,
    minimum_interval_seconds=_interval(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Keeps one run decoding the Avro tables' new raw rows within about "
    "BACKUP_FOLLOW_POLL_SECONDS of their commit.",
)
def decode_sensor(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
    active = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=JOB, statuses=_ACTIVE), limit=1
    )
    if active:
        return dg.SkipReason(f"run {active[0].run_id} is decoding")
    try:
        settings = load_settings()
    except ConfigError as exc:
        return dg.SkipReason(str(exc))
    if not settings.backup_decode:
        return dg.SkipReason("BACKUP_DECODE is false")
    follow = settings.backup_run_follow_seconds
    return dg.RunRequest(
        run_config={"ops": {"decoded_avro": {"config": {"follow_seconds": follow}}}}
    )


def decoded_definitions() -> dg.Definitions:
    return dg.Definitions(
        assets=[decoded_avro],
        asset_checks=[decoded_checks],
        jobs=[decode_job],
        sensors=[decode_sensor],
    )
