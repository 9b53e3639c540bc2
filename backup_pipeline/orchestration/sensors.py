"""One sensor per topic: request a backup run when Kafka is ahead of the HWMs.

While a new BACKUP_VERSION is being re-ingested the same sensor also requests capped runs
of the new version (inside BACKUP_BACKFILL_WINDOW, if set), keeps the previous version
backed up until the new one has caught up, and then says that it switched.
"""

import os
from datetime import UTC, datetime

import dagster as dg

from backup_pipeline.errors import BackupError
from backup_pipeline.orchestration.assets import topic_asset_key
from backup_pipeline.orchestration.jobs import (
    JOBS,
    REINGEST_TAG,
    TABLE_TAG,
    VERSION_TAG,
    WRITER_TAG,
    writer_tag_value,
)
from backup_pipeline.orchestration.resources import BackupEngine, TopicView
from backup_pipeline.settings import in_window
from backup_pipeline.topics import TOPICS, TopicSpec

PROGRESS_TAG = "backup_pipeline/reingest_progress"
SENSOR_INTERVAL_SECONDS = int(os.environ.get("BACKUP_SENSOR_INTERVAL_SECONDS", "30"))
# Each Kafka request of a tick (1 + one per partition). A broker that is down fails the
# first request, so a tick ends after about this long, far below Dagster's 60 s limit.
SENSOR_KAFKA_TIMEOUT = 5.0

ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _active_run(instance: dg.DagsterInstance, spec: TopicSpec, version: int) -> str | None:
    records = instance.get_run_records(
        filters=dg.RunsFilter(tags={WRITER_TAG: writer_tag_value(spec, version)}, statuses=ACTIVE),
        limit=1,
    )
    return records[0].dagster_run.run_id if records else None


def _run_request(
    spec: TopicSpec, version: int, max_records: int | None, extra_tags: dict[str, str]
) -> dg.RunRequest:
    return dg.RunRequest(
        run_config={
            "ops": {spec.table: {"config": {"version": version, "max_records": max_records}}}
        },
        tags={
            TABLE_TAG: spec.table,
            WRITER_TAG: writer_tag_value(spec, version),
            VERSION_TAG: str(version),
            **extra_tags,
        },
    )


def evaluate(
    context: dg.SensorEvaluationContext,
    spec: TopicSpec,
    view: TopicView,
    backfill_run_records: int,
    backfill_window: str,
    now: datetime | None = None,
    run_max_records: int | None = None,
) -> dg.SensorResult:
    """The decision of one tick, separate from I/O so it reads as the policy it is."""
    state = view.state
    requests: list[dg.RunRequest] = []
    reasons: list[str] = []
    events: list[dg.AssetObservation] = [
        dg.AssetObservation(
            asset_key=topic_asset_key(spec),
            metadata={
                "lag": view.serving_lag,
                "end_offsets": dg.MetadataValue.json(
                    {str(p.partition): p.end_offset for p in view.serving}
                ),
                "end_offset_total": sum(p.end_offset for p in view.serving),
                "version": state.serving,
            },
        )
    ]
    previous_serving = context.cursor
    if previous_serving and previous_serving != str(state.serving):
        message = (
            f"{spec.table}: switched from version {previous_serving} to version {state.serving}"
        )
        context.log.info(message)
        reasons.append(message)

    busy = _active_run(context.instance, spec, state.serving)
    if view.serving_lag == 0:
        reasons.append(f"lag 0: version {state.serving} of {spec.table} is caught up")
    elif busy:
        reasons.append(f"lag {view.serving_lag}, but run {busy} is still active")
    else:
        requests.append(_run_request(spec, state.serving, run_max_records, {}))

    if state.reingesting:
        events.append(
            dg.AssetObservation(
                asset_key=spec.table,
                metadata={
                    "reingest_version": state.target,
                    "reingest_records_done": state.records_done,
                    "reingest_records_total": state.records_total,
                    "reingest_percent": round(100 * state.progress, 1),
                },
            )
        )
        minute = now or datetime.now(UTC)
        if not in_window(backfill_window, minute.hour * 60 + minute.minute):
            reasons.append(f"{state.describe()}; waiting for window {backfill_window} UTC")
        elif busy_target := _active_run(context.instance, spec, state.target):
            reasons.append(f"{state.describe()}; run {busy_target} is active")
        else:
            reasons.append(state.describe())
            requests.append(
                _run_request(
                    spec,
                    state.target,
                    backfill_run_records,
                    {
                        REINGEST_TAG: f"v{state.target}",
                        PROGRESS_TAG: f"{state.records_done}/{state.records_total}",
                    },
                )
            )

    context.update_cursor(str(state.serving))
    return dg.SensorResult(
        run_requests=requests,
        skip_reason=None if requests else dg.SkipReason("; ".join(reasons)),
        asset_events=events,
    )


def lag_sensor(spec: TopicSpec) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.table}_lag_sensor",
        job=JOBS[spec.table],
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests a backup run of {spec.table} when its topic has records "
        "beyond the HWMs; drives re-ingestion when BACKUP_VERSION changes.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext, engine: BackupEngine
    ) -> dg.SensorResult | dg.SkipReason:
        try:
            settings = engine.settings()
            view = engine.topic_view(spec, timeout=SENSOR_KAFKA_TIMEOUT)
        except BackupError as exc:
            return dg.SkipReason(f"cannot compute lag: {exc}")
        return evaluate(
            context,
            spec,
            view,
            settings.backup_backfill_run_records,
            settings.backup_backfill_window,
            run_max_records=settings.backup_run_max_records,
        )

    return _sensor


SENSORS = [lag_sensor(spec) for spec in TOPICS]
