"""One sensor per topic: request a backup run when Kafka is ahead of the HWMs."""

import os

import dagster as dg

from backup_pipeline.errors import BackupError
from backup_pipeline.orchestration.jobs import JOBS, TABLE_TAG
from backup_pipeline.orchestration.resources import BackupEngine
from backup_pipeline.topics import TOPICS, TopicSpec

SENSOR_INTERVAL_SECONDS = int(os.environ.get("BACKUP_SENSOR_INTERVAL_SECONDS", "30"))
# Well under Dagster's 60-second limit for a sensor tick.
SENSOR_KAFKA_TIMEOUT = 10.0

ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def lag_sensor(spec: TopicSpec) -> dg.SensorDefinition:
    job = JOBS[spec.table]

    @dg.sensor(
        name=f"{spec.table}_lag_sensor",
        job=job,
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Requests a backup run of {spec.table} when its topic has records "
        "beyond the HWMs of the current version.",
    )
    def _sensor(
        context: dg.SensorEvaluationContext, engine: BackupEngine
    ) -> dg.SensorResult | dg.SkipReason:
        active = context.instance.get_run_records(
            filters=dg.RunsFilter(job_name=job.name, statuses=ACTIVE), limit=1
        )
        if active:
            return dg.SkipReason(
                f"a run for {spec.table} is already active ({active[0].dagster_run.run_id})"
            )
        try:
            partitions = engine.status(spec, timeout=SENSOR_KAFKA_TIMEOUT)
        except BackupError as exc:
            return dg.SkipReason(f"cannot compute lag: {exc}")
        lag = sum(p.lag for p in partitions)
        ends = {str(p.partition): p.end_offset for p in partitions}
        observation = dg.AssetObservation(
            asset_key=["kafka", *_topic_key_path(spec)],
            metadata={
                "lag": dg.MetadataValue.int(lag),
                "end_offsets": dg.MetadataValue.json(ends),
                "end_offset_total": dg.MetadataValue.int(sum(ends.values())),
            },
        )
        if lag == 0:
            return dg.SensorResult(
                skip_reason=dg.SkipReason(f"lag 0: {spec.table} is caught up"),
                asset_events=[observation],
            )
        version = partitions[0].version if partitions else None
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    tags={
                        TABLE_TAG: spec.table,
                        "backup_pipeline/version": str(version),
                        "backup_pipeline/lag": str(lag),
                    }
                )
            ],
            asset_events=[observation],
        )

    return _sensor


def _topic_key_path(spec: TopicSpec) -> list[str]:
    from backup_pipeline.orchestration.assets import topic_asset_key

    return list(topic_asset_key(spec).path[1:])


SENSORS = [lag_sensor(spec) for spec in TOPICS]
