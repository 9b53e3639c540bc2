"""The Dagster entry point: ``dagster dev -m backup_pipeline.definitions``."""

import dagster as dg

from backup_pipeline.orchestration.assets import TABLE_ASSETS, TOPIC_SPECS
from backup_pipeline.orchestration.jobs import JOBS
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
    asset_checks=VERIFY_CHECKS,
    jobs=[*JOBS.values(), purge_old_runs_job, restore_job, verify_job],
    sensors=SENSORS,
    schedules=[purge_schedule, verify_schedule],
    resources={"engine": BackupEngine()},
)
