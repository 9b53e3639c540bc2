"""The Dagster entry point: ``dagster dev -m backup_pipeline.definitions``."""

import dagster as dg

from backup_pipeline.orchestration.acknowledge_job import acknowledge_job
from backup_pipeline.orchestration.assets import TABLE_ASSETS, TOPIC_SPECS
from backup_pipeline.orchestration.checks import TABLE_CHECKS
from backup_pipeline.orchestration.jobs import JOBS, REINGEST_JOBS
from backup_pipeline.orchestration.resources import BackupEngine
from backup_pipeline.orchestration.restore_jobs import (
    VERIFY_CHECKS,
    restore_job,
    verify_job,
    verify_schedule,
)
from backup_pipeline.orchestration.retention import purge_old_runs_job, purge_schedule
from backup_pipeline.orchestration.sensors import SENSORS

defs = dg.Definitions(
    assets=[*TOPIC_SPECS, *TABLE_ASSETS],
    asset_checks=[*TABLE_CHECKS, *VERIFY_CHECKS],
    jobs=[
        *JOBS.values(),
        *REINGEST_JOBS.values(),
        purge_old_runs_job,
        restore_job,
        verify_job,
        acknowledge_job,
    ],
    sensors=SENSORS,
    schedules=[purge_schedule, verify_schedule],
    resources={"engine": BackupEngine()},
    # The Materialize button's run (__ASSET_JOB) runs in-process like the sensors' runs: a
    # subprocess per step costs seconds and buys nothing for one asset.
    executor=dg.in_process_executor,
)
