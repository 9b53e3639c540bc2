"""One job per backup table, run in-process (a subprocess per step costs seconds)."""

from __future__ import annotations

import dagster as dg

from backup_pipeline.topics import TOPICS, TopicSpec

# dagster.yaml limits queued runs to one per value of this tag: one writer per topic.
TABLE_TAG = "backup_pipeline/table"


def job_name(spec: TopicSpec) -> str:
    return f"backup_{spec.table}"


def backup_job(spec: TopicSpec) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        name=job_name(spec),
        selection=dg.AssetSelection.assets(spec.table),
        executor_def=dg.in_process_executor,
        tags={TABLE_TAG: spec.table},
        description=f"Back up {spec.default_topic} into {spec.table} (one pass).",
    )


JOBS = {spec.table: backup_job(spec) for spec in TOPICS}
