"""Two sensors per topic: one keeps the serving version followed, one drives re-ingestion.

The run model (README, "How runs work"): a backup run *follows* its topic — it passes from
the HWMs to the end offsets again and again, committing batch by batch, for
BACKUP_RUN_FOLLOW_SECONDS — so a record is stored seconds after Kafka acknowledged it.
The sensor only makes sure one follow run is active per (table, version); shortly before
that run's time is up it starts the successor, which asks the running one to hand over
(hwm.WriterLock), so there is no gap between runs.

Every tick the backup sensor also judges what a person looks at: how far behind the table
is (as time and in records) and which version serves (an observation), re-ingestion
progress with an ETA, and the four health checks (checks.py). It writes them as asset
events only when one changed in a way an operator acts on, and at least every
BACKUP_HEALTH_HEARTBEAT_SECONDS (reporting.py): Dagster keeps every event forever. A tick
that cannot reach Kafka or PostgreSQL skips and says why; it never errors.
"""

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import psycopg
from confluent_kafka import KafkaException

from backup_pipeline.errors import BackupError, ConfigError
from backup_pipeline.orchestration import check_memory, checks, reporting
from backup_pipeline.orchestration.assets import topic_asset_key
from backup_pipeline.orchestration.jobs import (
    TABLE_TAG,
    VERSION_TAG,
    job_name,
    reingest_job_name,
)
from backup_pipeline.orchestration.resources import BackupEngine, TopicView
from backup_pipeline.settings import Settings, env_setting, in_window
from backup_pipeline.topics import TopicSpec

# Each Kafka request of a tick (1 + one per partition). A broker that is down fails the
# first request, so a tick ends after about this long, far below Dagster's 60 s limit.
SENSOR_KAFKA_TIMEOUT = 5.0

SensorOutcome = dg.SensorResult | dg.SkipReason

ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def sensor_interval(environ: Mapping[str, str] | None = None) -> int:
    """BACKUP_SENSOR_INTERVAL_SECONDS for the sensor definitions, read alone: another
    variable that is missing or bad (reported by every tick) must not change it. A bad
    value of its own must not take the code location down: the default is used."""
    try:
        return env_setting("sensor_interval_seconds", int, environ)
    except ConfigError:
        return int(Settings.model_fields["sensor_interval_seconds"].get_default())


@dataclass(frozen=True)
class ActiveRun:
    run_id: str
    age_seconds: float  # since Dagster created it (queued runs count from then)


def follow_decision(
    active: Sequence[ActiveRun], follow_seconds: float, what: str
) -> tuple[bool, str]:
    """Whether to start a follow run, and why (pure: the policy of a tick).

    None active: start one. One that has followed for ``follow_seconds``: start its
    successor now (it takes over through the handoff when it gets the lock; the old one
    ends by itself a grace period later if no successor ever comes). Two active: a handover
    is under way.
    """
    if not active:
        return True, f"no run follows {what}: starting one"
    if len(active) == 1 and active[0].age_seconds >= follow_seconds:
        run = active[0]
        return (
            True,
            f"run {run.run_id[:8]} has followed {what} for {run.age_seconds:.0f} s: "
            "starting its successor",
        )
    newest = min(active, key=lambda r: r.age_seconds)
    return False, f"run {newest.run_id[:8]} follows {what} ({newest.age_seconds:.0f} s)"


def run_length(settings: Settings) -> float:
    """How long a follow run may follow: its successor is due at BACKUP_RUN_FOLLOW_SECONDS,
    and the grace covers a few ticks plus the successor's start-up."""
    return settings.backup_run_follow_seconds + max(120.0, 3 * settings.sensor_interval_seconds)


def _active_runs(
    instance: dg.DagsterInstance, job: str, version: int, now: float
) -> list[ActiveRun]:
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job, tags={VERSION_TAG: str(version)}, statuses=ACTIVE),
        limit=5,
    )
    return [
        ActiveRun(r.dagster_run.run_id, max(0.0, now - r.create_timestamp.timestamp()))
        for r in records
    ]


def _run_request(spec: TopicSpec, version: int, settings: Settings) -> dg.RunRequest:
    return dg.RunRequest(
        run_config={
            "ops": {
                spec.table: {"config": {"version": version, "follow_seconds": run_length(settings)}}
            }
        },
        tags={TABLE_TAG: spec.table, VERSION_TAG: str(version)},
    )


@dataclass
class Cursor:
    """What a tick remembers: the serving version (to say when it switched), where a
    re-ingestion stood when first seen (for its rate and ETA), the end offsets still waiting
    to be stored (reporting.behind_seconds), and the table observation last written."""

    serving: int | None = None
    reingest_version: int | None = None
    reingest_start_done: int = 0
    reingest_start_at: float = 0.0
    marks: dict[str, list[float]] = field(default_factory=dict)
    observed: str = ""  # signature of the last observation written
    observed_at: float = 0.0

    @classmethod
    def parse(cls, text: str | None) -> "Cursor":
        if not text:
            return cls()
        try:
            known = {k: v for k, v in json.loads(text).items() if k in cls.__dataclass_fields__}
            return cls(**known)
        except (ValueError, TypeError, AttributeError):
            return cls()

    def dump(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))


def _eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "unknown yet"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def observe(
    spec: TopicSpec,
    view: TopicView,
    cursor: Cursor,
    settings: Settings,
    now: float,
    behind: float = 0.0,
) -> tuple[list[dg.AssetObservation], list[str]]:
    """The observations of a tick, if they are due (reporting.observation_due), and what to
    say about versions (pure, given ``now``); updates ``cursor``. ``behind``: seconds the
    oldest record not yet stored has waited."""
    state = view.state
    lag = view.serving_lag
    reasons: list[str] = []
    if cursor.serving is not None and cursor.serving != state.serving:
        reasons.append(f"switched from version {cursor.serving} to version {state.serving}")
    cursor.serving = state.serving

    versions_text = ", ".join(f"v{v.version} {v.state}" for v in state.versions) or "none yet"
    table_meta: dict[str, Any] = {
        "lag": lag,
        "behind": dg.MetadataValue.text(
            f"{reporting.behind_text(behind)} ({reporting.behind_band(behind)})"
        ),
        # Only when something waits: a series of zeros would only draw a flat line.
        **({"seconds_behind": round(behind, 1)} if behind else {}),
        "serving_version": dg.MetadataValue.text(f"v{state.serving}"),
        "versions": dg.MetadataValue.text(versions_text),
    }
    progress = ""
    if state.reingesting:
        if cursor.reingest_version != state.target:
            cursor.reingest_version = state.target
            cursor.reingest_start_done = state.records_done
            cursor.reingest_start_at = now
        rate = (state.records_done - cursor.reingest_start_done) / max(
            1.0, now - cursor.reingest_start_at
        )
        remaining = max(0, state.records_total - state.records_done)
        eta = remaining / rate if rate > 0 else None
        window = settings.backup_backfill_window
        minute = time.gmtime(now).tm_hour * 60 + time.gmtime(now).tm_min
        waiting = "" if in_window(window, minute) else f"; waiting for window {window} UTC"
        table_meta.update(
            {
                "reingest_version": dg.MetadataValue.text(f"v{state.target}"),
                "reingest_percent": round(100 * state.progress, 1),
                "reingest_progress": dg.MetadataValue.text(
                    f"{state.records_done:,} of {state.records_total:,} records; "
                    f"ETA {_eta_text(eta)}{waiting}"
                ),
            }
        )
        reasons.append(f"{state.describe()}; ETA {_eta_text(eta)}")
        # Whole percents: progress is worth a row per percent, not per tick.
        progress = f"v{state.target} {int(100 * state.progress)}%{waiting and ' waiting'}"
    else:
        cursor.reingest_version = None

    signature = f"{reporting.behind_band(behind)}|v{state.serving}|{versions_text}|{progress}"
    if not reporting.observation_due(
        signature,
        cursor.observed,
        cursor.observed_at,
        now,
        settings.backup_health_heartbeat_seconds,
    ):
        return [], reasons
    cursor.observed, cursor.observed_at = signature, now
    return [
        dg.AssetObservation(
            asset_key=topic_asset_key(spec),
            metadata={
                "end_offset_total": sum(p.end_offset for p in view.serving),
                "end_offsets": dg.MetadataValue.json(
                    {str(p.partition): p.end_offset for p in view.serving}
                ),
            },
        ),
        dg.AssetObservation(asset_key=spec.table, metadata=table_meta),
    ], reasons


def backup_tick(
    context: dg.SensorEvaluationContext, spec: TopicSpec, engine: BackupEngine
) -> dg.SensorResult | dg.SkipReason:
    try:
        settings = engine.settings()
        view = engine.topic_view(spec, timeout=SENSOR_KAFKA_TIMEOUT)
    except (BackupError, psycopg.Error, KafkaException, OSError) as exc:
        return dg.SkipReason(f"cannot look at Kafka or PostgreSQL: {_one_line(exc)}")
    now = time.time()
    cursor = Cursor.parse(context.cursor)
    behind = reporting.behind_seconds(cursor.marks, view.serving, now)
    observations, reasons = observe(spec, view, cursor, settings, now, behind)
    events: list[dg.AssetObservation | dg.AssetCheckEvaluation] = list(observations)
    since = check_memory.remember_lag(
        context.instance,
        spec,
        view.serving_lag,
        settings.backup_caught_up_max_lag,
        now,
        behind,
    )
    health = checks.health(context.instance, spec, view, settings, now, since, behind)
    outcomes = checks.judge(spec, health)
    due = reporting.checks_due(
        {o.name: o.signature for o in outcomes},
        checks.reported(context.instance, spec),
        now,
        settings.backup_health_heartbeat_seconds,
    )
    events.extend(checks.evaluation(spec, o) for o in outcomes if o.name in due)
    check_memory.mark_retried(context.instance, spec)
    version = view.state.serving
    start, why = follow_decision(
        _active_runs(context.instance, job_name(spec), version, now),
        settings.backup_run_follow_seconds,
        f"{spec.table} v{version}",
    )
    reasons.insert(
        0,
        f"lag {view.serving_lag} ({reporting.behind_text(behind)} behind); {why}; "
        f"{len(events)} events written",
    )
    context.update_cursor(cursor.dump())
    if start:
        context.log.info("; ".join(reasons))
    return dg.SensorResult(
        run_requests=[_run_request(spec, version, settings)] if start else [],
        skip_reason=None if start else dg.SkipReason("; ".join(reasons)),
        asset_events=events,
    )


def reingest_tick(
    context: dg.SensorEvaluationContext,
    spec: TopicSpec,
    engine: BackupEngine,
    now_minute: int | None = None,
) -> dg.SensorResult | dg.SkipReason:
    try:
        settings = engine.settings()
        view = engine.topic_view(spec, timeout=SENSOR_KAFKA_TIMEOUT)
    except (BackupError, psycopg.Error, KafkaException, OSError) as exc:
        return dg.SkipReason(f"cannot look at Kafka or PostgreSQL: {_one_line(exc)}")
    state = view.state
    if not state.reingesting:
        return dg.SkipReason(f"nothing to re-ingest: version {state.serving} serves")
    window = settings.backup_backfill_window
    if now_minute is None:
        now_minute = time.gmtime().tm_hour * 60 + time.gmtime().tm_min
    if not in_window(window, now_minute):
        return dg.SkipReason(f"{state.describe()}; waiting for window {window} UTC")
    start, why = follow_decision(
        _active_runs(context.instance, reingest_job_name(spec), state.target, time.time()),
        settings.backup_run_follow_seconds,
        f"the re-ingestion of {spec.table} v{state.target}",
    )
    if not start:
        return dg.SkipReason(f"{state.describe()}; {why}")
    context.log.info(f"{state.describe()}; {why}")
    return dg.SensorResult(run_requests=[_run_request(spec, state.target, settings)])


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


_Tick = Callable[[dg.SensorEvaluationContext, TopicSpec, BackupEngine], SensorOutcome]


def _sensor(
    spec: TopicSpec, name: str, job: str, tick: _Tick, description: str
) -> dg.SensorDefinition:
    @dg.sensor(
        name=name,
        job_name=job,
        minimum_interval_seconds=sensor_interval(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=description,
    )
    def _evaluate(context: dg.SensorEvaluationContext, engine: BackupEngine) -> SensorOutcome:
        return tick(context, spec, engine)

    return _evaluate


def backup_sensor(spec: TopicSpec) -> dg.SensorDefinition:
    return _sensor(
        spec,
        f"{spec.table}_backup_sensor",
        job_name(spec),
        backup_tick,
        f"Keeps one run following {spec.table}'s serving version, and reports its lag, "
        "serving version, re-ingestion progress and health checks when they change "
        "(and at least every BACKUP_HEALTH_HEARTBEAT_SECONDS).",
    )


def reingest_sensor(spec: TopicSpec) -> dg.SensorDefinition:
    return _sensor(
        spec,
        f"{spec.table}_reingest_sensor",
        reingest_job_name(spec),
        lambda context, spec_, engine: reingest_tick(context, spec_, engine),
        f"Re-ingests {spec.table} under a new BACKUP_VERSION (inside BACKUP_BACKFILL_WINDOW). "
        "Stop this sensor and cancel its run to pause; start it to resume from where it "
        "stopped.",
    )
