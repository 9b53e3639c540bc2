"""What the checks remember between ticks, in the Dagster instance (its key-value store
and its runs): the latest failed backup run and whether the backup has recovered from it,
since when the lag has been high and the oldest record waited. Kept in the instance, not a
sensor cursor, so the sensor, a follow run and a check run by hand all judge alike."""

import json
from dataclasses import dataclass, replace

import dagster as dg

from backup_pipeline.orchestration.jobs import job_name
from backup_pipeline.orchestration.resources import TopicView
from backup_pipeline.topics import TopicSpec


@dataclass(frozen=True)
class FailedRun:
    run_id: str
    message: str
    recovered: str | None = None  # why it no longer counts; None: it still does


_FINISHED = [
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
]


def latest_failed_run(instance: dg.DagsterInstance, spec: TopicSpec) -> FailedRun | None:
    """The latest finished run of the table's backup job, if it failed (cancelled runs were
    stopped on purpose and do not count)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name(spec), statuses=_FINISHED), limit=1
    )
    if not records or records[0].dagster_run.status != dg.DagsterRunStatus.FAILURE:
        return None
    run = records[0].dagster_run
    message = "the run failed"
    failures = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    if failures and failures[-1].dagster_event is not None:
        data = failures[-1].dagster_event.step_failure_data
        if data is not None and data.error is not None:
            message = data.error.message.strip().splitlines()[0][:300]
    return FailedRun(run.run_id, message)


def _failed_hwms_key(spec: TopicSpec) -> str:
    return f"backup_pipeline/failed_run_hwms/{spec.table}"


def unrecovered_failure(
    instance: dg.DagsterInstance, spec: TopicSpec, view: TopicView
) -> FailedRun | None:
    """The latest failed run, with ``recovered`` set once the backup demonstrably moved on.

    Where the failed run ended is taken from the HWMs when a tick or a run first sees it
    failed (kept in the instance's key-value store beside the lag, so every judge agrees):
    the failed run has stopped writing by then, so a HWM above those is a later run's
    records. A topic with no lag needs no proof. A failure that lasts (runs keep failing,
    PostgreSQL stays down) moves no HWM, so the check is red from the first tick on.
    """
    failed = latest_failed_run(instance, spec)
    if failed is None:
        return None
    key = _failed_hwms_key(spec)
    now_hwms = {str(p.partition): -1 if p.hwm is None else p.hwm for p in view.serving}
    try:
        seen = json.loads(instance.run_storage.get_cursor_values({key}).get(key) or "{}")
    except ValueError:
        seen = {}
    if not isinstance(seen, dict) or seen.get("run_id") != failed.run_id:
        seen = {"run_id": failed.run_id, "hwms": now_hwms}
        instance.run_storage.set_cursor_values({key: json.dumps(seen)})
    ended_at: dict[str, int] = seen.get("hwms") or {}
    moved = sorted(int(p) for p, hwm in now_hwms.items() if hwm > ended_at.get(p, -1))
    if moved:
        where = ", ".join(str(p) for p in moved)
        return replace(failed, recovered=f"records stored past its end (partitions {where})")
    if view.serving and view.serving_lag == 0:
        return replace(failed, recovered="the topic is caught up")
    return failed


RETRIED_BY_TAG = "backup_pipeline/retried_by"


def mark_retried(instance: dg.DagsterInstance, spec: TopicSpec) -> None:
    """Tag a failed run with the run that retried it: the runs list shows the failure red,
    and this tag says it was dealt with, and by which run (Dagster tags only the retry)."""
    failed = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job_name(spec), statuses=[dg.DagsterRunStatus.FAILURE]),
        limit=5,
    )
    for record in failed:
        run = record.dagster_run
        if RETRIED_BY_TAG in run.tags:
            continue
        retries = instance.get_run_records(
            filters=dg.RunsFilter(tags={"dagster/parent_run_id": run.run_id}), limit=1
        )
        if retries:
            instance.add_run_tags(run.run_id, {RETRIED_BY_TAG: retries[0].dagster_run.run_id})


def _lag_key(spec: TopicSpec) -> str:
    return f"backup_pipeline/lag_high_since/{spec.table}"


def _behind_key(spec: TopicSpec) -> str:
    return f"backup_pipeline/behind_since/{spec.table}"


def _read_time(instance: dg.DagsterInstance, key: str) -> float | None:
    value = instance.run_storage.get_cursor_values({key}).get(key, "")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def lag_high_since(instance: dg.DagsterInstance, spec: TopicSpec) -> float | None:
    """Since when (epoch seconds) the sensor has seen the lag above the threshold. Kept in
    the instance's key-value store, so a run and a check run by hand judge like the sensor."""
    return _read_time(instance, _lag_key(spec))


def behind_since(instance: dg.DagsterInstance, spec: TopicSpec) -> float | None:
    """Since when the oldest record not yet stored has waited, as the sensor last saw it
    (reporting.behind_seconds); None: nothing waited."""
    return _read_time(instance, _behind_key(spec))


def remember_lag(
    instance: dg.DagsterInstance,
    spec: TopicSpec,
    lag: int,
    max_lag: int,
    now: float,
    behind_seconds: float = 0.0,
) -> float | None:
    """The sensor's update of :func:`lag_high_since` and :func:`behind_since`; returns the
    former."""
    since = lag_high_since(instance, spec)
    since = (since or now) if lag > max_lag else None
    waiting = str(now - behind_seconds) if behind_seconds > 0 else ""
    instance.run_storage.set_cursor_values(
        {_lag_key(spec): "" if since is None else str(since), _behind_key(spec): waiting}
    )
    return since
