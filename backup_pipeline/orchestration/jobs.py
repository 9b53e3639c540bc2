"""Two jobs per backup table, run in-process (a subprocess per step costs seconds).

``backup_<table>`` keeps the serving version backed up; ``reingest_<table>`` re-ingests a
new version (BACKUP_VERSION) while the serving one is still backed up. Each has its own
sensor, so a re-ingestion is paused by stopping its sensor in the UI (README). Neither
job runs the asset checks: the sensors report them every tick (checks.py).
"""

from __future__ import annotations

import dagster as dg

from backup_pipeline.topics import TopicSpec

# The only tags a person filters runs by; the job name says what kind of run it is.
TABLE_TAG = "backup_pipeline/table"
VERSION_TAG = "backup_pipeline/version"


def job_name(spec: TopicSpec) -> str:
    return f"backup_{spec.table}"


def reingest_job_name(spec: TopicSpec) -> str:
    return f"reingest_{spec.table}"


def _job(spec: TopicSpec, name: str, description: str) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        name=name,
        selection=dg.AssetSelection.assets(spec.table).without_checks(),
        executor_def=dg.in_process_executor,
        tags={TABLE_TAG: spec.table},
        description=description,
    )


def backup_job(spec: TopicSpec) -> dg.UnresolvedAssetJobDefinition:
    return _job(
        spec,
        job_name(spec),
        f"Back up {spec.default_topic} into {spec.table}: the serving version, followed "
        "for BACKUP_RUN_FOLLOW_SECONDS (started by its sensor).",
    )


def reingest_job(spec: TopicSpec) -> dg.UnresolvedAssetJobDefinition:
    return _job(
        spec,
        reingest_job_name(spec),
        f"Re-ingest {spec.default_topic} into {spec.table} under a new BACKUP_VERSION "
        "(started by its re-ingest sensor; stop that sensor to pause).",
    )
