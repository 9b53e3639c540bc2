"""The storage maintenance job: in the definitions, scheduled daily, runnable by hand with a
retention override, refusing a Dagster it was not made for."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from backup_pipeline import dagster_storage
from backup_pipeline.definitions import defs
from backup_pipeline.orchestration.maintenance import dagster_storage_maintenance_job

TABLE = dg.AssetKey("bekreftelser")
REPO = Path(__file__).resolve().parent.parent
OP = "prune_asset_events"


def report(instance: dg.DagsterInstance, lag: int, passed: bool) -> None:
    instance.report_runless_asset_event(dg.AssetObservation(asset_key=TABLE, metadata={"lag": lag}))
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(asset_key=TABLE, check_name="lag_ok", passed=passed)
    )


def run(instance: dg.DagsterInstance, retention_days: float | None = None):
    config = {} if retention_days is None else {"retention_days": retention_days}
    return dagster_storage_maintenance_job.execute_in_process(
        instance=instance, run_config={"ops": {OP: {"config": config}}}, raise_on_error=False
    )


def test_the_job_is_defined_and_scheduled_daily_after_the_run_purge():
    assert defs.resolve_job_def("dagster_storage_maintenance_job") is not None
    schedules = {s.name: s for s in defs.schedules or []}
    schedule = schedules["dagster_storage_maintenance_job_schedule"]
    purge = schedules["purge_old_runs_job_schedule"]
    assert isinstance(schedule, dg.ScheduleDefinition)
    assert isinstance(purge, dg.ScheduleDefinition)
    assert schedule.cron_schedule == "37 3 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert purge.cron_schedule == "17 3 * * *"


def test_a_run_by_hand_deletes_all_but_the_newest_and_says_how_many(pg_instance):
    instance, _ = pg_instance
    for lag in (1, 2, 3):
        report(instance, lag, passed=lag != 3)

    # A retention of a millisecond: everything reported so far is old.
    result = run(instance, retention_days=1e-3 / 86_400)

    assert result.success
    assert (
        result.output_for_node(OP)
        == dagster_storage.PruneCounts(
            observations=2, check_evaluations=2, check_executions=2
        ).as_dict()
    )
    (materialization,) = [
        e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT
    ]
    metadata = materialization.step_output_data.metadata
    assert metadata["deleted_event_logs"].value == 4
    assert metadata["deleted_asset_check_executions"].value == 2
    assert metadata["asset_check_executions_rows"].value == 1
    records = instance.fetch_observations(TABLE, limit=10).records
    assert [r.asset_observation.metadata["lag"].value for r in records] == [3]
    latest = instance.get_latest_asset_check_evaluation_record(dg.AssetCheckKey(TABLE, "lag_ok"))
    assert latest is not None and latest.status.value == "FAILED"


def test_the_retention_comes_from_the_setting_by_default(pg_instance, monkeypatch):
    instance, _ = pg_instance
    report(instance, 1, passed=True)
    report(instance, 2, passed=True)
    monkeypatch.setenv("BACKUP_ASSET_EVENT_RETENTION_DAYS", "1e-8")  # about a millisecond
    result = run(instance)
    assert result.success
    assert result.output_for_node(OP)["observations"] == 1

    report(instance, 3, passed=True)
    monkeypatch.setenv("BACKUP_ASSET_EVENT_RETENTION_DAYS", "14")
    assert run(instance).output_for_node(OP) == dagster_storage.PruneCounts().as_dict()


def test_another_dagster_minor_fails_the_run_with_the_reason_and_deletes_nothing(
    pg_instance, monkeypatch
):
    instance, _ = pg_instance
    report(instance, 1, passed=True)
    report(instance, 2, passed=True)
    monkeypatch.setattr(dagster_storage, "installed_dagster_version", lambda: "1.14.2")
    result = run(instance, retention_days=1e-8)

    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.message
    assert "Dagster 1.14.2 is installed" in message and "1.13.x, the locked version" in message
    assert len(instance.fetch_observations(TABLE, limit=10).records) == 2


def test_an_instance_not_on_postgresql_is_refused():
    with dg.instance_for_test() as instance:  # SQLite
        result = run(instance, retention_days=1)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.message
    assert "one PostgreSQL database" in message and "storage: postgres" in message


def test_a_bad_retention_setting_fails_the_run_naming_the_variable(pg_instance, monkeypatch):
    instance, _ = pg_instance
    monkeypatch.setenv("BACKUP_ASSET_EVENT_RETENTION_DAYS", "0")
    result = run(instance)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "BACKUP_ASSET_EVENT_RETENTION_DAYS" in failure.step_failure_data.error.message


@pytest.mark.parametrize("instigator", ["schedule", "sensor"])
def test_dagster_yaml_sets_tick_retention_for_every_status(instigator):
    from dagster._config import validate_config
    from dagster._core.instance.config import retention_config_schema

    retention = yaml.safe_load((REPO / "dagster.yaml").read_text())["retention"]
    assert validate_config(retention_config_schema().config_type, retention).success
    days = retention[instigator]["purge_after_days"]
    assert set(days) == {"skipped", "success", "failure", "started"}
    assert all(isinstance(n, int) and n > 0 for n in days.values())
