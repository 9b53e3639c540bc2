"""One external asset per Kafka topic and one asset per backup table, from one factory."""

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import dagster as dg
import psycopg

from backup_pipeline import logs, versions
from backup_pipeline.backup import pass_, records
from backup_pipeline.backup.report import PassReport
from backup_pipeline.errors import BackupError
from backup_pipeline.orchestration import check_memory, checks
from backup_pipeline.orchestration.jobs import TABLE_TAG, VERSION_TAG
from backup_pipeline.orchestration.resources import (
    BackupEngine,
    accounted,
    newest_record_time,
    rows_stored,
)
from backup_pipeline.settings import Settings
from backup_pipeline.topics import TopicSpec, ValueFormat

GROUP = "kafka_backup"

# What each column of a backup table means. Which columns there are, in which order and of
# which type is the writer's (records.columns, the COPY column list); a test holds both to
# the migrated tables.
_DESCRIPTIONS = {
    "version": "Backup version (BACKUP_VERSION); part of the primary key.",
    "kafka_partition": "Kafka partition the record came from.",
    "kafka_offset": "Kafka offset of the record within its partition.",
    "record_key": "Record key: Kafka LongSerializer, signed 64-bit.",
    "arbeidssoeker_id": "arbeidssoekerId from the JSON event.",
    "traceparent": "Last W3C traceparent header (at most 58 characters); NULL if none or too long.",
    "kafka_timestamp": "Record timestamp (NULL for rows from before it was kept).",
    "kafka_timestamp_type": "1 = CreateTime, 2 = LogAppendTime.",
    "headers": "All headers in order: [[name, base64 value or null], ...].",
    "kafka_value": "The value bytes exactly as produced.",
}
_DATA_DESCRIPTIONS = {
    ValueFormat.JSON_EVENT: "The JSON event (hendelseType, periodeId, ...).",
    ValueFormat.BYTES: "The value bytes exactly as produced (Confluent-framed Avro).",
}
# COPY's type names as the other assets show them.
_SQL_TYPES = {"int2": "smallint", "int4": "integer", "int8": "bigint"}


def topic_asset_key(spec: TopicSpec) -> dg.AssetKey:
    return dg.AssetKey(["kafka", re.sub(r"[^A-Za-z0-9_]", "_", spec.default_topic)])


def column_schema(spec: TopicSpec) -> dg.TableSchema:
    descriptions = {**_DESCRIPTIONS, "data": _DATA_DESCRIPTIONS[spec.value_format]}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name, _SQL_TYPES.get(type_, type_), description=descriptions[name])
            for name, type_ in records.columns(spec.value_format)
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


# A follow run materializes only when it stored records, so a quiet topic is not an error by
# itself: warn after two hours without a materialization, fail after a day.
FRESHNESS = dg.FreshnessPolicy.time_window(
    fail_window=timedelta(hours=24), warn_window=timedelta(hours=2)
)


class BackupRunConfig(dg.Config):
    """Per-run options. The sensors set them; the Materialize button leaves them empty,
    which backs up the serving version once, to the end offsets, like ``backup-pipeline
    backup`` (a follow run that holds the topic hands it over within a pass)."""

    version: int | None = None  # None: the serving version (backup_versions)
    follow_seconds: float = 0.0  # > 0: keep passing for this long (sensor runs)
    max_records: int | None = None  # a single pass's cap; None: BACKUP_MAX_RECORDS_PER_PASS


@dataclass
class _Window:
    """What the passes since the last reported event stored."""

    rows_before: int
    rows: int = 0
    quarantined: int = 0
    warnings: int = 0
    lost: int = 0
    passes: int = 0
    seconds: float = 0.0
    newest: datetime | None = None
    hwms: dict[int, int] = field(default_factory=dict)

    def add(self, report: PassReport, newest: datetime | None) -> None:
        self.rows += report.rows
        self.quarantined += report.quarantined
        self.warnings += report.warnings
        self.lost += report.lost
        self.passes += 1
        self.seconds += report.duration_seconds
        if newest is not None and (self.newest is None or newest > self.newest):
            self.newest = newest
        self.hwms.update({p.partition: p.hwm_after for p in report.partitions})

    @property
    def records(self) -> int:
        return self.rows + self.quarantined

    def metadata(self, version: int, ended: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {
            # Dagster shows this one as the asset's row count in the catalog.
            "dagster/row_count": self.rows_before + self.rows,
            "serving_version": dg.MetadataValue.text(f"v{version}"),
            "rows_written": self.rows,
            "records_per_second": round(self.records / self.seconds, 1) if self.seconds else 0.0,
            "hwms": dg.MetadataValue.json({str(p): o for p, o in sorted(self.hwms.items())}),
        }
        if self.newest is not None:
            meta["last_record_at"] = dg.MetadataValue.timestamp(self.newest)
        # Counts that are nearly always 0 would only draw flat lines: shown when they happen.
        for name, value in (
            ("quarantined", self.quarantined),
            ("warnings", self.warnings),
            ("records_lost", self.lost),
        ):
            if value:
                meta[name] = value
        if ended:
            meta["run_ended_because"] = dg.MetadataValue.text(ended)
        return meta

    def next(self) -> "_Window":
        return _Window(rows_before=self.rows_before + self.rows, hwms=dict(self.hwms))


def _tag_run(context: dg.AssetExecutionContext, spec: TopicSpec, version: int) -> None:
    """Runs started by hand carry no tags: give them the two a person filters by."""
    wanted = {TABLE_TAG: spec.table, VERSION_TAG: str(version)}
    missing = {k: v for k, v in wanted.items() if context.run.tags.get(k) != v}
    if missing:
        context.instance.add_run_tags(context.run.run_id, missing)


def table_asset(spec: TopicSpec) -> dg.AssetsDefinition:
    @dg.asset(
        name=spec.table,
        deps=[topic_asset_key(spec)],
        kinds={"postgres"},
        group_name=GROUP,
        description=f"Backup of `{spec.default_topic}` in PostgreSQL table `{spec.table}`: "
        "one row per record, keyed by (version, kafka_partition, kafka_offset); "
        f"`{spec.table}_current` is the serving version. {spec.description}",
        metadata={
            "dagster/table_name": f"public.{spec.table}",
            "dagster/column_schema": column_schema(spec),
        },
        freshness_policy=FRESHNESS,
        # A run reports a materialization per interval in which it stored records, and a
        # re-ingestion run of a version that does not serve yet reports observations.
        output_required=False,
    )
    def _backup(
        context: dg.AssetExecutionContext, config: BackupRunConfig, engine: BackupEngine
    ) -> Iterator[dg.AssetMaterialization | dg.AssetObservation | dg.MaterializeResult]:
        settings = engine.prepare()
        try:
            version, serving = engine.write_version(spec, config.version)
        except versions.RetiredVersionError as exc:
            # Queued before a re-ingestion took over: nothing to do, and nothing failed.
            context.log.info(f"not run: {exc}")
            return
        _tag_run(context, spec, version)
        reingest = serving is not None and version != serving
        outcome = pass_.FollowOutcome()
        with logs.bind(run_id=context.run.run_id, table=spec.table), engine.connection() as conn:
            window = _Window(rows_before=rows_stored(conn, spec.table, version))
            following = config.follow_seconds > 0
            # A follow run materializes when it stored records and the table's latest
            # materialization, by this run or an earlier one, is at least
            # BACKUP_MATERIALIZE_EVERY_SECONDS old: each one is kept forever with its four
            # check results, and runs hand over every BACKUP_RUN_FOLLOW_SECONDS, so a
            # per-run clock would report twice per run. In between, the sensor's lag and
            # checks say how far behind the table is.
            every = settings.backup_materialize_every_seconds
            reported_at = None if reingest else _last_materialized(context, spec)

            def due() -> bool:
                return bool(window.records) and (
                    reported_at is None or time.time() - reported_at >= every
                )

            if following:
                reports = engine.follow(
                    spec, version, config.follow_seconds, outcome, _retired(conn, spec, version)
                )
            else:
                reports = iter([engine.run_backup(spec, version, config.max_records)])
            for report in reports:
                if report.skipped:
                    outcome.skipped = report.skipped
                    continue
                if report.records or report.errors:
                    context.log.debug(report.summary())
                window.add(report, newest_record_time(conn, report))
                problems = accounted(conn, report)
                if report.errors or problems:
                    yield _event(spec, window, version, reingest, "a pass failed")
                    raise dg.Failure(
                        description="; ".join(
                            [
                                *report.errors,
                                *(f"offsets not accounted for: {d.describe()}" for d in problems),
                            ]
                        )
                    )
                if following and due():
                    judged = [] if reingest else _judge_checks(context, spec, engine, settings)
                    yield _event(spec, window, version, reingest, None)
                    _report(context, judged)
                    reported_at = time.time()
                    window = window.next()
            # A skipped pass was logged by the engine (its logger is in the run's log). A
            # follow run's rows not yet reported go with its successor's materialization.
            if not outcome.skipped and (due() or (window.passes and not following)):
                judged = (
                    _judge_checks(context, spec, engine, settings)
                    if following and not reingest
                    else []
                )
                yield _event(
                    spec, window, version, reingest, outcome.ended_because or None, final=True
                )
                _report(context, judged)

    return _backup


def _last_materialized(context: dg.AssetExecutionContext, spec: TopicSpec) -> float | None:
    event = context.instance.get_latest_materialization_event(dg.AssetKey(spec.table))
    return event.timestamp if event is not None else None


def _retired(conn: psycopg.Connection, spec: TopicSpec, version: int) -> Callable[[], bool]:
    """Whether ``version`` was retired (a re-ingestion took over): its follow run ends.
    Asked at most every 15 s: the follow loop calls it about once a second."""
    asked = [time.monotonic()]

    def retired() -> bool:
        if time.monotonic() - asked[0] < 15:
            return False
        asked[0] = time.monotonic()
        return any(
            v.version == version and v.state is versions.VersionLifecycle.RETIRED
            for v in versions.recorded_versions(conn, spec.table)
        )

    return retired


def _judge_checks(
    context: dg.AssetExecutionContext, spec: TopicSpec, engine: BackupEngine, settings: Settings
) -> list[dg.AssetCheckEvaluation]:
    """The checks as the sensor would judge them now, to report with a materialization."""
    try:
        view = engine.topic_view(spec, timeout=5.0)
    except BackupError as exc:
        context.log.warning(f"checks not judged with this materialization: {exc}")
        return []
    instance = context.instance
    since = check_memory.lag_high_since(instance, spec)
    return checks.evaluations(
        spec, checks.health(instance, spec, view, settings, time.time(), since)
    )


def _report(context: dg.AssetExecutionContext, judged: list[dg.AssetCheckEvaluation]) -> None:
    """Report check results right after the materialization they judge (judged before it,
    so only milliseconds pass in between). Reported, not yielded: Dagster records an
    evaluation the run did not plan only when it comes from outside a run, and the asset
    page counts only evaluations newer than the latest materialization — without this it
    would show "not evaluated" after each materialization until the next sensor tick."""
    for evaluation in judged:
        context.instance.report_runless_asset_event(evaluation)


def _event(
    spec: TopicSpec,
    window: _Window,
    version: int,
    reingest: bool,
    ended: str | None,
    *,
    final: bool = False,
) -> dg.AssetMaterialization | dg.AssetObservation | dg.MaterializeResult:
    """The event for a window of passes. The run's last one is its output (a
    MaterializeResult): without an output Dagster skips the checks of a Materialize run."""
    metadata = window.metadata(version, ended)
    if reingest:
        # A version that does not serve yet must not look like the table's latest state.
        del metadata["serving_version"]
        metadata["reingest_version"] = dg.MetadataValue.text(f"v{version}")
        return dg.AssetObservation(asset_key=spec.table, metadata=metadata)
    if final:
        return dg.MaterializeResult(metadata=metadata)
    return dg.AssetMaterialization(asset_key=spec.table, metadata=metadata)
