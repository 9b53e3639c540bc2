"""The health checks of a backup table: each answers a question a person acts on.

The sensors evaluate them every tick and report the results (so the UI always shows a
settled result, never "In Progress" behind a long run); the same checks can be executed
by hand from the asset page. A check fails only on something to act on and passes again
once it was dealt with: quarantined records and retention gaps count until they are
acknowledged (``backup-pipeline acknowledge`` or the ``acknowledge`` job), lag fails only
after it stayed above the threshold for BACKUP_LAG_ALERT_SECONDS, and a failed run stops
counting once the backup demonstrably recovered: records were stored past where it ended,
or the topic is caught up (a later run finishes only after BACKUP_RUN_FOLLOW_SECONDS, far
too late to wait for).

Each result carries a one-line description (what the asset overview and the lineage graph
show next to the check): the lag check says how far behind the serving version is, as
time, and which version serves.
"""

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import dagster as dg

from backup_pipeline.errors import BackupError
from backup_pipeline.orchestration.jobs import job_name
from backup_pipeline.orchestration.reporting import Reported, behind_band, behind_text
from backup_pipeline.orchestration.resources import BackupEngine, TopicView
from backup_pipeline.settings import Settings
from backup_pipeline.topics import TopicSpec

LAG = "lag_below_threshold"
QUARANTINE = "no_unacknowledged_quarantine"
GAPS = "no_unacknowledged_gaps"
RUNS = "backup_runs_succeed"
CHECKS = (LAG, QUARANTINE, GAPS, RUNS)

_DESCRIPTIONS = {
    LAG: "The serving version's lag is at most BACKUP_CAUGHT_UP_MAX_LAG, or has been above "
    "it for less than BACKUP_LAG_ALERT_SECONDS.",
    QUARANTINE: "No quarantined record of the serving version waits for review. Review them "
    "in backup_quarantine, then acknowledge them (backup-pipeline acknowledge --quarantine).",
    GAPS: "Kafka deleted no offsets of the serving version before they were backed up "
    "(backup_gaps), or the loss was acknowledged (backup-pipeline acknowledge --gaps).",
    RUNS: "No backup run failed since the backup last made progress: a failed run stops "
    "counting once records were stored past where it ended, or the topic is caught up (a "
    "failed run also covers offsets that were not accounted for).",
}


@dataclass(frozen=True)
class FailedRun:
    run_id: str
    message: str
    recovered: str | None = None  # why it no longer counts; None: it still does


@dataclass(frozen=True)
class Health:
    """Everything the checks judge, gathered by the caller (sensor tick or check run)."""

    view: TopicView
    max_lag: int
    lag_alert_seconds: float
    lag_high_for_seconds: float | None  # None: lag is within the threshold
    failed_run: FailedRun | None
    unreachable: str | None = None  # Kafka or PostgreSQL could not be asked
    notes: dict[str, str] = field(default_factory=dict)
    behind_seconds: float = 0.0  # how long the oldest record not yet stored has waited


@dataclass(frozen=True)
class Outcome:
    name: str
    passed: bool
    severity: dg.AssetCheckSeverity
    metadata: dict[str, Any]
    description: str = ""

    @property
    def signature(self) -> str:
        return signature(self.passed, self.severity, self.metadata)


def signature(passed: bool, severity: dg.AssetCheckSeverity, metadata: Mapping[str, Any]) -> str:
    """What must change for a result to be worth a new row: the result, its severity and,
    for the lag check, the time band of how far behind the serving version is."""
    band = metadata.get("behind")
    band_text = band.value if isinstance(band, dg.TextMetadataValue) else (band or "")
    return f"{passed}|{severity.value}|{band_text}"


def judge(spec: TopicSpec, health: Health) -> list[Outcome]:
    """The four checks of ``spec``'s table from what ``health`` says (pure)."""
    view = health.view
    version = view.state.serving
    lag = view.serving_lag
    high = health.lag_high_for_seconds
    lag_failing = high is not None and high >= health.lag_alert_seconds
    unack = view.unacknowledged
    where = (
        f"SELECT * FROM backup_quarantine WHERE kafka_topic = '{view.state.topic}' "
        f"AND version = {version} AND acknowledged_at IS NULL"
    )
    runs_meta: dict[str, Any] = {"job": job_name(spec)}
    failed = health.failed_run
    runs_text = "no failed run since the backup last made progress"
    if failed:
        runs_meta["failed_run"] = dg.MetadataValue.dagster_run(failed.run_id)
        runs_meta["error"] = failed.message
        if failed.recovered:
            runs_meta["recovered"] = dg.MetadataValue.text(failed.recovered)
            runs_text = f"run {failed.run_id[:8]} failed, since recovered: {failed.recovered}"
        else:
            runs_text = f"run {failed.run_id[:8]} failed and no progress since: {failed.message}"
    behind = health.behind_seconds
    behind_line = (
        f"v{version} serves; {behind_text(behind)} behind ({behind_band(behind)}), "
        f"lag {lag:,} record{'' if lag == 1 else 's'}"
    )
    if lag_failing:
        behind_line += f", above {health.max_lag:,} for {high:.0f} s"
    return [
        Outcome(
            LAG,
            not lag_failing,
            dg.AssetCheckSeverity.ERROR,
            {
                # The one series worth a plot; the limits are text, so no flat lines.
                "lag": lag,
                **_count("seconds_behind", round(behind, 1)),
                # The band, not the seconds, decides when a new result is worth a row.
                "behind": dg.MetadataValue.text(behind_band(behind)),
                "serving_version": dg.MetadataValue.text(f"v{version}"),
                "rule": dg.MetadataValue.text(
                    f"fails when the lag stays above {health.max_lag} for "
                    f"{health.lag_alert_seconds:.0f} s"
                ),
                **({"above_for_seconds": round(high, 1)} if high is not None else {}),
            },
            behind_line,
        ),
        Outcome(
            QUARANTINE,
            unack.quarantined == 0,
            dg.AssetCheckSeverity.WARN,
            {
                **_count("unacknowledged", unack.quarantined),
                "where_to_look": dg.MetadataValue.text(where),
                "how_to_acknowledge": dg.MetadataValue.text(
                    f"backup-pipeline acknowledge --table {spec.table} --quarantine "
                    "--by NAME --note TEXT"
                ),
            },
            f"{unack.quarantined:,} quarantined records wait for review; acknowledge them "
            "once reviewed"
            if unack.quarantined
            else "no quarantined record waits for review",
        ),
        Outcome(
            GAPS,
            unack.lost_offsets == 0,
            dg.AssetCheckSeverity.ERROR,
            {
                **_count("unacknowledged_lost_offsets", unack.lost_offsets),
                "where_to_look": dg.MetadataValue.text(
                    f"SELECT * FROM backup_gaps WHERE kafka_topic = '{view.state.topic}' "
                    f"AND version = {version} AND kind = 'retention' AND acknowledged_at IS NULL"
                ),
                "how_to_acknowledge": dg.MetadataValue.text(
                    f"backup-pipeline acknowledge --table {spec.table} --gaps --by NAME --note TEXT"
                ),
            },
            f"{unack.lost_offsets:,} offsets deleted by Kafka before they were backed up"
            if unack.lost_offsets
            else "no unacknowledged lost offsets",
        ),
        Outcome(
            RUNS,
            failed is None or failed.recovered is not None,
            dg.AssetCheckSeverity.ERROR,
            runs_meta,
            runs_text,
        ),
    ]


def _count(name: str, value: float) -> dict[str, Any]:
    """A count as a number when there is something to count, else as text: a series that
    is 0 on every healthy tick would only draw a flat line."""
    return {name: value} if value else {name: dg.MetadataValue.text("none")}


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


def health(
    instance: dg.DagsterInstance,
    spec: TopicSpec,
    view: TopicView,
    settings: Settings,
    now: float,
    since: float | None,
    behind_seconds: float | None = None,
) -> Health:
    """What the checks judge. ``behind_seconds`` is the sensor's own measure; a run or a
    check run by hand reads it from what the sensor last remembered."""
    if behind_seconds is None:
        waiting = behind_since(instance, spec)
        behind_seconds = max(0.0, now - waiting) if waiting is not None else 0.0
    return Health(
        view=view,
        max_lag=settings.backup_caught_up_max_lag,
        lag_alert_seconds=settings.backup_lag_alert_seconds,
        lag_high_for_seconds=(now - since) if since is not None else None,
        failed_run=unrecovered_failure(instance, spec, view),
        behind_seconds=behind_seconds,
    )


def evaluations(
    spec: TopicSpec, health: Health, only: set[str] | None = None
) -> list[dg.AssetCheckEvaluation]:
    """The results to report (all four, or those named in ``only``)."""
    return [evaluation(spec, o) for o in judge(spec, health) if only is None or o.name in only]


def evaluation(spec: TopicSpec, outcome: Outcome) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(spec.table),
        check_name=outcome.name,
        passed=outcome.passed,
        severity=outcome.severity,
        metadata=outcome.metadata,
        description=outcome.description or None,
    )


def reported(instance: dg.DagsterInstance, spec: TopicSpec) -> dict[str, Reported | None]:
    """Each check's latest result as Dagster shows it (one query for the four), and whether
    it judges the table's latest materialization (the asset page shows only those)."""
    asset = dg.AssetKey(spec.table)
    keys = [dg.AssetCheckKey(asset, name) for name in CHECKS]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    records = instance.get_asset_records([asset])
    materialized = records[0].asset_entry.last_materialization_record if records else None
    result: dict[str, Reported | None] = {}
    for key in keys:
        record = latest.get(key)
        event = record.event if record is not None else None
        data = event.dagster_event.event_specific_data if event and event.dagster_event else None
        if record is None or not isinstance(data, dg.AssetCheckEvaluation):
            result[key.name] = None  # none yet, or one in progress (run by hand)
            continue
        # The same test as the UI's (AssetCheckExecutionRecord.targets_latest_materialization).
        if materialized is None:
            current = True
        elif data.target_materialization_data is not None:
            current = data.target_materialization_data.storage_id == materialized.storage_id
        else:
            current = materialized.timestamp < record.create_timestamp
        result[key.name] = Reported(
            signature=signature(data.passed, data.severity, data.metadata),
            timestamp=record.create_timestamp,
            for_latest_materialization=current,
        )
    return result


def table_checks(spec: TopicSpec) -> dg.AssetChecksDefinition:
    """The checks as a definition, so the asset page lists them and can run them by hand."""

    @dg.multi_asset_check(
        name=f"{spec.table}_health",
        specs=[
            dg.AssetCheckSpec(name, asset=spec.table, description=_DESCRIPTIONS[name])
            for name in CHECKS
        ],
        can_subset=True,
    )
    def _checks(
        context: dg.AssetCheckExecutionContext, engine: BackupEngine
    ) -> Iterator[dg.AssetCheckResult]:
        settings = engine.settings()
        try:
            view = engine.topic_view(spec)
        except BackupError as exc:
            raise dg.Failure(description=f"cannot judge {spec.table}: {exc}") from None
        judged = health(
            context.instance,
            spec,
            view,
            settings,
            time.time(),
            lag_high_since(context.instance, spec),
        )
        selected = {key.name for key in context.selected_asset_check_keys}
        for outcome in judge(spec, judged):
            if outcome.name in selected:
                yield dg.AssetCheckResult(
                    asset_key=spec.table,
                    check_name=outcome.name,
                    passed=outcome.passed,
                    severity=outcome.severity,
                    metadata=outcome.metadata,
                    description=outcome.description or None,
                )

    return _checks
