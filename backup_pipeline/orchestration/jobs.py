"""One job per backup table, run in-process (a subprocess per step costs seconds)."""

from __future__ import annotations

import dagster as dg

from backup_pipeline.topics import TOPICS, TopicSpec

TABLE_TAG = "backup_pipeline/table"
# The checks every backup run evaluates (see assets.check_specs).
RUN_CHECKS = ("caught_up", "no_quarantined_records", "no_retention_gaps", "offsets_accounted_for")
# dagster.yaml allows one queued-to-running run per value of this tag: one writer per
# (table, version), the same unit as the engine's advisory lock.
WRITER_TAG = "backup_pipeline/writer"
VERSION_TAG = "backup_pipeline/version"
REINGEST_TAG = "backup_pipeline/reingest"


def job_name(spec: TopicSpec) -> str:
    return f"backup_{spec.table}"


def writer_tag_value(spec: TopicSpec, version: int) -> str:
    return f"{spec.table}:v{version}"


def backup_job(spec: TopicSpec) -> dg.UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        name=job_name(spec),
        # The asset and the checks its run reports, but not the sample verify check: that
        # one reads Kafka offset by offset and runs on its own schedule (verify_backups).
        selection=dg.AssetSelection.assets(spec.table).without_checks()
        | dg.AssetSelection.checks(
            *(dg.AssetCheckKey(dg.AssetKey(spec.table), name) for name in RUN_CHECKS)
        ),
        executor_def=dg.in_process_executor,
        tags={TABLE_TAG: spec.table},
        description=f"Back up {spec.default_topic} into {spec.table} (one pass).",
    )


JOBS = {spec.table: backup_job(spec) for spec in TOPICS}
