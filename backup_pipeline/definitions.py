"""The Dagster entry point: ``dagster dev -m backup_pipeline.definitions``."""

import dagster as dg

from backup_pipeline.orchestration.acknowledge_job import acknowledge_job
from backup_pipeline.orchestration.analyst_views import analyst_view_assets
from backup_pipeline.orchestration.decoded import decoded_definitions
from backup_pipeline.orchestration.maintenance import (
    dagster_storage_maintenance_job,
    dagster_storage_maintenance_schedule,
)
from backup_pipeline.orchestration.positions import positions_sensor
from backup_pipeline.orchestration.resources import BackupEngine
from backup_pipeline.orchestration.restore_jobs import restore_job, verify_job, verify_schedule
from backup_pipeline.orchestration.retention import purge_old_runs_job, purge_schedule
from backup_pipeline.orchestration.topic import topic_definitions
from backup_pipeline.topics import TOPICS

defs = dg.Definitions.merge(
    *(topic_definitions(spec) for spec in TOPICS),
    decoded_definitions(),
    dg.Definitions(
        assets=analyst_view_assets,
        jobs=[
            purge_old_runs_job,
            dagster_storage_maintenance_job,
            restore_job,
            verify_job,
            acknowledge_job,
        ],
        schedules=[purge_schedule, dagster_storage_maintenance_schedule, verify_schedule],
        sensors=[positions_sensor],
        resources={"engine": BackupEngine()},
        # The Materialize button's run (__ASSET_JOB) runs in-process like the sensors' runs: a
        # subprocess per step costs seconds and buys nothing for one asset.
        executor=dg.in_process_executor,
    ),
)
