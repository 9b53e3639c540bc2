"""Old runless asset events leave Dagster's database; what the UI shows as current stays.

Against a real Dagster instance on PostgreSQL (dagster-postgres, the deployment's storage),
with events written the way the sensors write them (``report_runless_asset_event``).
"""

from __future__ import annotations

import re
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from backup_pipeline import dagster_storage
from backup_pipeline.errors import UnsupportedDagsterError

TABLE = dg.AssetKey("bekreftelser")
TOPIC = dg.AssetKey(["kafka", "bekreftelser"])
OTHER = dg.AssetKey("hendelser")
REPO = Path(__file__).resolve().parent.parent


def observe(instance: dg.DagsterInstance, key: dg.AssetKey, lag: int) -> None:
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=key, metadata={"lag": lag}, tags={"dagster/data_version": str(lag)}
        )
    )


def evaluate(instance: dg.DagsterInstance, key: dg.AssetKey, check: str, passed: bool) -> None:
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=key, check_name=check, passed=passed, metadata={"passed": passed}
        )
    )


def now_utc() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def rows(conn: psycopg.Connection, query: str) -> list[tuple[object, ...]]:
    return conn.execute(query).fetchall()


def observation_lags(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[int]:
    records = instance.fetch_observations(key, limit=100).records
    return [
        r.asset_observation.metadata["lag"].value  # type: ignore[union-attr,misc]
        for r in records
    ]


def check_history(instance: dg.DagsterInstance, key: dg.AssetKey, check: str) -> list[bool]:
    history = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(key, check), limit=100
    )
    return [r.status.value == "SUCCEEDED" for r in history]


def test_old_runless_events_go_and_the_newest_per_asset_and_check_stay(pg_instance):
    instance, url = pg_instance
    for lag in (10, 20, 30):
        observe(instance, TABLE, lag)
    observe(instance, TOPIC, 1)
    observe(instance, TOPIC, 2)  # the topic's newest: old, but kept
    for passed in (True, False, True):
        evaluate(instance, TABLE, "lag_ok", passed)
    evaluate(instance, TABLE, "runs_succeed", True)
    evaluate(instance, TABLE, "runs_succeed", False)  # this check's newest: old, but kept
    evaluate(instance, OTHER, "lag_ok", False)  # its only evaluation: old, but kept
    cutoff = now_utc()
    observe(instance, TABLE, 40)
    evaluate(instance, TABLE, "lag_ok", False)
    assets_before = instance.get_asset_records()

    with closing(dagster_storage.connect(url)) as conn:
        # Two rows a batch: the job must go on until a batch comes up short.
        counts = dagster_storage.prune_asset_events(conn, cutoff, batch_rows=2)
        assert counts == dagster_storage.PruneCounts(
            observations=4, check_evaluations=4, check_executions=4, event_tags=4
        )
        # Nothing points at a deleted row: every execution's event and every tag's event.
        assert not rows(
            conn,
            "SELECT c.id FROM asset_check_executions c LEFT JOIN event_logs e"
            " ON e.id = c.evaluation_event_storage_id WHERE e.id IS NULL",
        )
        assert not rows(
            conn,
            "SELECT t.id FROM asset_event_tags t LEFT JOIN event_logs e ON e.id = t.event_id"
            " WHERE e.id IS NULL",
        )
        assert rows(conn, "SELECT count(*) FROM asset_event_tags") == [(2,)]
        # Done is done: a second run deletes nothing.
        assert dagster_storage.prune_asset_events(conn, cutoff) == dagster_storage.PruneCounts()

    # What the UI reads: the latest observation (metadata, data version) per asset...
    assert observation_lags(instance, TABLE) == [40]
    assert observation_lags(instance, TOPIC) == [2]
    latest = instance.get_latest_data_version_record(TOPIC, is_source=True)
    assert latest is not None and latest.event_log_entry.tags["dagster/data_version"] == "2"
    # ...each check's latest result...
    assert check_history(instance, TABLE, "lag_ok") == [False]
    assert check_history(instance, TABLE, "runs_succeed") == [False]
    assert check_history(instance, OTHER, "lag_ok") == [False]
    latest_check = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(TABLE, "runs_succeed")
    )
    assert latest_check is not None and latest_check.event is not None
    assert latest_check.event.timestamp < cutoff.replace(tzinfo=UTC).timestamp()
    summary = instance.event_log_storage.get_asset_check_summary_records(
        [dg.AssetCheckKey(TABLE, "lag_ok")]
    )[dg.AssetCheckKey(TABLE, "lag_ok")]
    assert summary.last_completed_check_execution_record is not None
    # ...and the asset records (untouched: they hold no pointer to a deleted row).
    assert instance.get_asset_records() == assets_before


def test_events_newer_than_the_cutoff_all_stay(pg_instance):
    instance, url = pg_instance
    cutoff = now_utc()
    for lag in (1, 2, 3):
        observe(instance, TABLE, lag)
        evaluate(instance, TABLE, "lag_ok", lag != 2)

    with closing(dagster_storage.connect(url)) as conn:
        assert dagster_storage.prune_asset_events(conn, cutoff) == dagster_storage.PruneCounts()
    assert observation_lags(instance, TABLE) == [3, 2, 1]
    assert check_history(instance, TABLE, "lag_ok") == [True, False, True]


@dg.asset(key=TABLE)
def table_asset() -> None:
    pass


@dg.asset_check(asset=TABLE, name="rows_ok")
def rows_ok() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


def test_check_executions_of_deleted_runs_go_unless_newest(pg_instance):
    instance, url = pg_instance
    first = dg.materialize([table_asset, rows_ok], instance=instance)
    second = dg.materialize([table_asset, rows_ok], instance=instance)
    instance.delete_run(first.run_id)  # what purge_old_runs_job does
    instance.delete_run(second.run_id)
    third = dg.materialize([table_asset, rows_ok], instance=instance)
    cutoff = now_utc()

    with closing(dagster_storage.connect(url)) as conn:
        # Dagster leaves a deleted run's check executions behind: the reason for this step.
        left = "SELECT run_id FROM asset_check_executions ORDER BY id"
        assert rows(conn, left) == [(first.run_id,), (second.run_id,), (third.run_id,)]
        counts = dagster_storage.prune_asset_events(conn, cutoff)
        assert counts == dagster_storage.PruneCounts(run_check_executions=2)
        assert rows(conn, left) == [(third.run_id,)]  # its run exists (and it is the newest)

    # A deleted run's execution that is still a check's newest stays.
    instance.delete_run(third.run_id)
    with closing(dagster_storage.connect(url)) as conn:
        assert dagster_storage.prune_asset_events(conn, now_utc()) == dagster_storage.PruneCounts()
    assert check_history(instance, TABLE, "rows_ok") == [True]


def test_a_second_run_at_the_same_time_does_nothing(pg_instance):
    instance, url = pg_instance
    observe(instance, TABLE, 1)
    observe(instance, TABLE, 2)
    with (
        closing(dagster_storage.connect(url)) as holder,
        closing(dagster_storage.connect(url)) as conn,
    ):
        holder.execute("SELECT pg_advisory_lock(%s)", [dagster_storage.LOCK_KEY])
        assert dagster_storage.prune_asset_events(conn, now_utc()) is None
        assert observation_lags(instance, TABLE) == [2, 1]
        holder.execute("SELECT pg_advisory_unlock(%s)", [dagster_storage.LOCK_KEY])
        counts = dagster_storage.prune_asset_events(conn, now_utc())
        assert counts is not None and counts.observations == 1


def test_a_database_without_dagsters_tables_is_refused(empty_database_url):
    refused = pytest.raises(UnsupportedDagsterError, match="lacks table event_logs, table asset_")
    with closing(dagster_storage.connect(empty_database_url)) as conn, refused:
        dagster_storage.prune_asset_events(conn, now_utc())


def test_a_schema_that_moved_on_is_refused_before_anything_is_deleted(pg_instance):
    instance, url = pg_instance
    observe(instance, TABLE, 1)
    observe(instance, TABLE, 2)
    with closing(dagster_storage.connect(url)) as conn:
        conn.execute("ALTER TABLE asset_check_executions DROP COLUMN evaluation_event_storage_id")
        with pytest.raises(
            UnsupportedDagsterError,
            match=r"lacks asset_check_executions\.evaluation_event_storage_id \(not the schema",
        ):
            dagster_storage.prune_asset_events(conn, now_utc())
    assert observation_lags(instance, TABLE) == [2, 1]


def test_the_locked_dagster_minor_is_accepted_in_any_patch_release():
    locked = ".".join(map(str, dagster_storage.LOCKED_DAGSTER_MINOR))
    for version in (f"{locked}.0", f"{locked}.27", f"{locked}.30rc1"):
        dagster_storage.check_dagster_version(version)
    dagster_storage.check_dagster_version(dagster_storage.installed_dagster_version())


@pytest.mark.parametrize("version", ["1.14.0", "1.12.9", "2.13.0", "1", "unknown"])
def test_another_dagster_minor_is_refused_with_the_reason(version):
    with pytest.raises(UnsupportedDagsterError) as refused:
        dagster_storage.check_dagster_version(version)
    message = str(refused.value)
    assert f"Dagster {version} is installed" in message
    assert "Dagster 1.13.x, the locked version" in message
    assert "event_logs" in message and "\n" not in message


def test_the_guard_names_the_minor_version_the_lock_pins():
    pinned = re.search(r"^dagster==(\d+)\.(\d+)\.", (REPO / "requirements.lock").read_text(), re.M)
    assert pinned is not None
    assert (int(pinned[1]), int(pinned[2])) == dagster_storage.LOCKED_DAGSTER_MINOR
