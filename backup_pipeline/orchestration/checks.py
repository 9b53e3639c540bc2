"""The health checks of a backup table: each answers a question a person acts on.

The sensors evaluate them every tick and report the results (so the UI always shows a
settled result, never "In Progress" behind a long run); the same checks can be executed
by hand from the asset page. A check fails only on something to act on and passes again
once it was dealt with: quarantined records and retention gaps count until they are
acknowledged (``backup-pipeline acknowledge`` or the ``acknowledge`` job), lag fails only
after it stayed above the threshold for BACKUP_LAG_ALERT_SECONDS, and a failed run stops
counting once a later run of the same job succeeded.
"""

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from backup_pipeline.errors import BackupError
from backup_pipeline.orchestration.jobs import job_name
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
    RUNS: "The latest finished backup run succeeded (a failed run also covers offsets "
    "that were not accounted for).",
}


@dataclass(frozen=True)
class FailedRun:
    run_id: str
    message: str


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


@dataclass(frozen=True)
class Outcome:
    name: str
    passed: bool
    severity: dg.AssetCheckSeverity
    metadata: dict[str, Any]


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
    if health.failed_run:
        runs_meta["failed_run"] = dg.MetadataValue.dagster_run(health.failed_run.run_id)
        runs_meta["error"] = health.failed_run.message
    return [
        Outcome(
            LAG,
            not lag_failing,
            dg.AssetCheckSeverity.ERROR,
            {
                # The one series worth a plot; the limits are text, so no flat lines.
                "lag": lag,
                "serving_version": dg.MetadataValue.text(f"v{version}"),
                "rule": dg.MetadataValue.text(
                    f"fails when the lag stays above {health.max_lag} for "
                    f"{health.lag_alert_seconds:.0f} s"
                ),
                **({"above_for_seconds": round(high, 1)} if high is not None else {}),
            },
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
        ),
        Outcome(RUNS, health.failed_run is None, dg.AssetCheckSeverity.ERROR, runs_meta),
    ]


def _count(name: str, value: int) -> dict[str, Any]:
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


def lag_high_since(instance: dg.DagsterInstance, spec: TopicSpec) -> float | None:
    """Since when (epoch seconds) the sensor has seen the lag above the threshold. Kept in
    the instance's key-value store, so a run and a check run by hand judge like the sensor."""
    value = instance.run_storage.get_cursor_values({_lag_key(spec)}).get(_lag_key(spec), "")
    try:
        return float(value) if value else None
    except ValueError:
        return None


def remember_lag(
    instance: dg.DagsterInstance, spec: TopicSpec, lag: int, max_lag: int, now: float
) -> float | None:
    """The sensor's update of :func:`lag_high_since`; returns it."""
    since = lag_high_since(instance, spec)
    since = (since or now) if lag > max_lag else None
    instance.run_storage.set_cursor_values({_lag_key(spec): "" if since is None else str(since)})
    return since


def health(
    instance: dg.DagsterInstance,
    spec: TopicSpec,
    view: TopicView,
    settings: Settings,
    now: float,
    since: float | None,
) -> Health:
    return Health(
        view=view,
        max_lag=settings.backup_caught_up_max_lag,
        lag_alert_seconds=settings.backup_lag_alert_seconds,
        lag_high_for_seconds=(now - since) if since is not None else None,
        failed_run=latest_failed_run(instance, spec),
    )


def evaluations(spec: TopicSpec, health: Health) -> list[dg.AssetCheckEvaluation]:
    """What a sensor tick reports."""
    return [
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey(spec.table),
            check_name=o.name,
            passed=o.passed,
            severity=o.severity,
            metadata=o.metadata,
        )
        for o in judge(spec, health)
    ]


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
                )

    return _checks
