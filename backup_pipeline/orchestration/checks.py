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

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from backup_pipeline.errors import BackupError
from backup_pipeline.orchestration.check_memory import (
    FailedRun,
    behind_since,
    lag_high_since,
    unrecovered_failure,
)
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
