"""Settings from the environment, validated once, with errors that name the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cache
from typing import Annotated, Any, Literal, TypeVar, cast

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
)

from backup_pipeline.errors import ConfigError
from backup_pipeline.topics import TOPICS, TopicSpec

T = TypeVar("T")


def _lower(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


class Settings(BaseModel):
    """Everything the engine needs; each field is one environment variable.

    Fields that ``env_setting`` reads alone keep their rules in their type (constraints,
    ``Annotated`` validators), not in ``field_validator`` methods, so both ways in agree.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    kafka_brokers: str = Field(validation_alias="KAFKA_BROKERS", min_length=1)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT"] = Field(
        default="PLAINTEXT", validation_alias="KAFKA_SECURITY_PROTOCOL"
    )
    kafka_ca_path: str | None = Field(default=None, validation_alias="KAFKA_CA_PATH")
    kafka_certificate_path: str | None = Field(
        default=None, validation_alias="KAFKA_CERTIFICATE_PATH"
    )
    kafka_private_key_path: str | None = Field(
        default=None, validation_alias="KAFKA_PRIVATE_KEY_PATH"
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        default="SCRAM-SHA-512", validation_alias="KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str | None = Field(default=None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, validation_alias="KAFKA_SASL_PASSWORD"
    )
    kafka_timeout_seconds: float = Field(
        default=10.0, gt=0, le=50, validation_alias="KAFKA_TIMEOUT_SECONDS"
    )
    # A pass gives up when its partitions deliver nothing for this long. A managed Kafka's
    # rolling restart moves partition leaders for minutes; giving up then would only make
    # the next pass start over, so the default outlasts one (measured restarts: 10-40 s per
    # broker here, several brokers in a row in production).
    kafka_no_progress_seconds: float = Field(
        default=300.0, ge=5, le=3600, validation_alias="KAFKA_NO_PROGRESS_SECONDS"
    )

    # Empty means: let libpq read PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE...
    database_url: SecretStr = Field(default=SecretStr(""), validation_alias="DATABASE_URL")

    # The target version (re-ingested, then serving); unset = keep the version recorded as
    # serving in backup_versions (CURRENT_VERSION on a fresh database). See versions.py.
    # Versions start at 1 as in the seed: 0 or less is a typo, refused before anything runs.
    backup_version: int | None = Field(
        default=None, ge=1, le=32767, validation_alias="BACKUP_VERSION"
    )
    # A target below the serving version is a downgrade: re-ingesting an older numbering is
    # refused unless asked for explicitly (versions.DowngradeError).
    backup_allow_downgrade: bool = Field(default=False, validation_alias="BACKUP_ALLOW_DOWNGRADE")
    # A pass holds about three batches at once (one mapped, two being written): these
    # bound its memory. Measured: ~200 MB peak RSS whatever the record size (bench/).
    backup_batch_size: int = Field(
        default=10_000, ge=1, le=1_000_000, validation_alias="BACKUP_BATCH_SIZE"
    )
    backup_batch_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, validation_alias="BACKUP_BATCH_BYTES"
    )
    # PostgreSQL connections a pass writes on (batches overlap, commits stay in order).
    backup_writer_connections: int = Field(
        default=2, ge=1, le=8, validation_alias="BACKUP_WRITER_CONNECTIONS"
    )
    backup_max_records_per_pass: int = Field(
        default=0, ge=0, validation_alias="BACKUP_MAX_RECORDS_PER_PASS"
    )
    # Re-ingestion of a new version: it becomes current once its lag is at most this; until
    # then the previous version keeps being backed up.
    backup_caught_up_max_lag: int = Field(
        default=1000, ge=0, validation_alias="BACKUP_CAUGHT_UP_MAX_LAG"
    )
    # "HH:MM-HH:MM" (UTC): re-ingestion runs start only inside it; empty = at once.
    backup_backfill_window: str = Field(default="", validation_alias="BACKUP_BACKFILL_WINDOW")
    backup_auto_migrate: bool = Field(default=True, validation_alias="BACKUP_AUTO_MIGRATE")

    # Attempts per pass (1 = no retry) after a lost PostgreSQL or Kafka connection.
    backup_pass_attempts: int = Field(default=3, ge=1, validation_alias="BACKUP_PASS_ATTEMPTS")
    # Longest a statement of a pass waits for a table lock someone else holds; 0 = no bound
    # (then only a statement_timeout, if any, ends the wait).
    backup_lock_timeout_seconds: float = Field(
        default=60.0, ge=0, validation_alias="BACKUP_LOCK_TIMEOUT_SECONDS"
    )
    backup_log_format: Annotated[Literal["text", "json"], BeforeValidator(_lower)] = Field(
        default="text", validation_alias="BACKUP_LOG_FORMAT"
    )
    # Offsets per partition the scheduled matches_topic check compares.
    backup_verify_sample: int = Field(default=200, ge=1, validation_alias="BACKUP_VERIFY_SAMPLE")
    backup_run_retention_days: int = Field(
        default=14, ge=1, validation_alias="BACKUP_RUN_RETENTION_DAYS"
    )
    # Runless asset observations and check evaluations older than this are deleted from
    # Dagster's database by the daily storage maintenance job (dagster_storage.py), the
    # newest per asset and per check always kept. Fractional days are fine (0.003 = 4 min).
    backup_asset_event_retention_days: float = Field(
        default=14.0, gt=0, le=3650, validation_alias="BACKUP_ASSET_EVENT_RETENTION_DAYS"
    )
    # How often each topic's sensor looks for lag. Read at definition time, so a bad value
    # must become a one-line ConfigError there, never a traceback of the code location.
    sensor_interval_seconds: int = Field(
        default=30, ge=5, validation_alias="BACKUP_SENSOR_INTERVAL_SECONDS"
    )
    # Crash injection for the kill tests ("<point>[:<n>]", see failpoints.py); empty outside.
    backup_pipeline_failpoint: str = Field(
        default="",
        pattern=r"^([a-z_]+(:[1-9][0-9]*)?)?$",
        validation_alias="BACKUP_PIPELINE_FAILPOINT",
    )
    # The run model (README, "How runs work"): a sensor keeps one follow run per topic and
    # version active; it passes from the HWMs to the end again and again for this long,
    # looking for new records every BACKUP_FOLLOW_POLL_SECONDS once caught up.
    backup_run_follow_seconds: float = Field(
        default=600.0, ge=10, le=3600, validation_alias="BACKUP_RUN_FOLLOW_SECONDS"
    )
    backup_follow_poll_seconds: float = Field(
        default=1.0, gt=0, le=60, validation_alias="BACKUP_FOLLOW_POLL_SECONDS"
    )
    # Records per pass of a follow run: between passes it checks whether another writer
    # (a manual run, the next follow run) is waiting, so this bounds the handover time.
    backup_follow_pass_records: int = Field(
        default=200_000, ge=1, validation_alias="BACKUP_FOLLOW_PASS_RECORDS"
    )
    # A follow run reports a materialization (with the four check results) when it stored
    # records and the table's latest materialization, by any run, is at least this old.
    # Every one is kept forever in Dagster's event log: 900 s keeps three tables within
    # issue 17's budget (README, "Dagster's own storage"); lag and health move in between.
    backup_materialize_every_seconds: float = Field(
        default=900.0, ge=1, validation_alias="BACKUP_MATERIALIZE_EVERY_SECONDS"
    )
    # The backup sensor writes an asset event only when what an operator acts on changed
    # (a check's result or severity, the lag's time band, versions, whole re-ingest percent),
    # and at least this often, so "last evaluated" never looks stale.
    backup_health_heartbeat_seconds: float = Field(
        default=1800.0, ge=1, le=86_400, validation_alias="BACKUP_HEALTH_HEARTBEAT_SECONDS"
    )
    # The lag check fails once the lag has stayed above BACKUP_CAUGHT_UP_MAX_LAG this long.
    backup_lag_alert_seconds: float = Field(
        default=300.0, ge=0, validation_alias="BACKUP_LAG_ALERT_SECONDS"
    )
    # Consumer-group positions (positions/): how often the committed offsets of the groups
    # reading the backed-up topics are recorded (a restore can then use a position at most
    # this old), which groups (comma-separated fnmatch patterns; empty allow = every group),
    # and how long every recorded change is kept before thinning to one per hour.
    backup_positions_interval_seconds: int = Field(
        default=30, ge=5, le=3600, validation_alias="BACKUP_POSITIONS_INTERVAL_SECONDS"
    )
    backup_consumer_groups_allow: str = Field(
        default="", validation_alias="BACKUP_CONSUMER_GROUPS_ALLOW"
    )
    backup_consumer_groups_deny: str = Field(
        default="", validation_alias="BACKUP_CONSUMER_GROUPS_DENY"
    )
    backup_positions_full_history_hours: int = Field(
        default=24, ge=1, validation_alias="BACKUP_POSITIONS_FULL_HISTORY_HOURS"
    )

    # Confluent schema registry of the Avro topics (NAIS injects these three). Empty = no
    # registry: schema ids are resolved from the vendored writer schemas (decode/schemas/).
    # TLS as Kafka's: the registry's certificate is checked against KAFKA_CA_PATH if set.
    kafka_schema_registry: str = Field(default="", validation_alias="KAFKA_SCHEMA_REGISTRY")
    kafka_schema_registry_user: str | None = Field(
        default=None, validation_alias="KAFKA_SCHEMA_REGISTRY_USER"
    )
    kafka_schema_registry_password: SecretStr | None = Field(
        default=None, validation_alias="KAFKA_SCHEMA_REGISTRY_PASSWORD"
    )
    # Longest one registry request may take; the decode pass (never the raw backup) waits.
    schema_registry_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, validation_alias="BACKUP_SCHEMA_REGISTRY_TIMEOUT_SECONDS"
    )
    # false: the decode sensor starts no decode runs (the raw backup is unaffected either way).
    backup_decode: bool = Field(default=True, validation_alias="BACKUP_DECODE")
    # Raw rows the decode pass reads, decodes and commits per transaction.
    decode_batch_size: int = Field(
        default=5_000, ge=1, le=1_000_000, validation_alias="BACKUP_DECODE_BATCH_SIZE"
    )
    # Connections the decode pass writes batches on, besides the one it reads with
    # (1: it writes on its reading connection).
    decode_writer_connections: int = Field(
        default=2, ge=1, le=8, validation_alias="BACKUP_DECODE_WRITER_CONNECTIONS"
    )
    # Niceness the decode follow run runs at (at least; 0: unchanged), so that the raw
    # backup's runs on the same CPUs get them first (issue 18).
    decode_nice: int = Field(default=10, ge=0, le=19, validation_alias="BACKUP_DECODE_NICE")

    # `backup-pipeline metrics` (metrics/): where it listens, and the longest one scrape may
    # take in all (PostgreSQL, then Kafka with what is left): a scrape that runs out reports
    # what it has and counts the error, never hangs past Prometheus's own scrape timeout.
    # Every interface by default: in a pod, Prometheus scrapes the pod's IP.
    metrics_host: str = Field(
        default="0.0.0.0",  # noqa: S104
        min_length=1,
        validation_alias="BACKUP_METRICS_HOST",
    )
    metrics_port: int = Field(default=9108, ge=1, le=65535, validation_alias="BACKUP_METRICS_PORT")
    metrics_scrape_timeout_seconds: float = Field(
        default=5.0, gt=0, le=60, validation_alias="BACKUP_METRICS_SCRAPE_TIMEOUT_SECONDS"
    )
    # Dagster's own instance storage (dagster.yaml reads it too); the metrics endpoint counts
    # failed runs there. Empty: no run metrics.
    dagster_pg_url: SecretStr = Field(default=SecretStr(""), validation_alias="DAGSTER_PG_URL")

    topic_names: dict[str, str] = Field(default_factory=dict, exclude=True)

    @field_validator("kafka_brokers")
    @classmethod
    def _brokers_look_like_host_port(cls, value: str) -> str:
        for broker in value.split(","):
            host, _, port = broker.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError("expected host:port[,host:port...]")
        return value

    @field_validator("backup_backfill_window")
    @classmethod
    def _window_is_hh_mm_range(cls, value: str) -> str:
        if not value.strip():
            return value
        problem = ValueError("expected HH:MM-HH:MM (UTC), e.g. 22:00-06:00")
        start, sep, end = value.partition("-")
        if not sep:
            raise problem
        for part in (start, end):
            try:
                minutes = _minutes(part)
            except ValueError:
                raise problem from None
            if not 0 <= minutes <= 24 * 60:
                raise problem
        return value

    def topic(self, spec: TopicSpec) -> str:
        return self.topic_names.get(spec.table, spec.default_topic)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``environ`` (default ``os.environ``); raise ConfigError if bad."""
    env = dict(os.environ if environ is None else environ)
    topic_names = {}
    for spec in TOPICS:
        name = env.get(spec.topic_env_var, "").strip() or spec.default_topic
        topic_names[spec.table] = name
    known = {f.validation_alias for f in Settings.model_fields.values() if f.validation_alias}
    values = {k: v for k, v in env.items() if k in known}
    try:
        return Settings.model_validate({**values, "topic_names": topic_names})
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def env_setting(name: str, kind: type[T], environ: Mapping[str, str] | None = None) -> T:
    """One ``Settings`` field, read from ``environ`` (default ``os.environ``) when it is used.

    For code without a ``Settings`` object at hand: log set-up before a command loads its
    settings, failpoints, Dagster definitions and ops that need no Kafka. Code that holds a
    ``Settings`` (a backup pass among them) reads its fields instead. Same rules, default
    and one-line ``ConfigError`` as ``load_settings``; ``kind`` is the field's type, for the
    type checker.
    """
    field = Settings.model_fields[name]
    alias = str(field.validation_alias)
    raw = (os.environ if environ is None else environ).get(alias)
    if raw is None:
        return cast(T, field.get_default(call_default_factory=True))
    try:
        return cast(T, _field_adapter(name).validate_python(raw))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, alias)) from None


@cache
def _field_adapter(name: str) -> TypeAdapter[Any]:
    field = Settings.model_fields[name]
    # The field's type with its constraints and validators, as pydantic stores them apart.
    annotation: Any = field.annotation
    if field.metadata:
        annotation = Annotated.__class_getitem__((annotation, *field.metadata))  # type: ignore[attr-defined]
    return TypeAdapter(annotation)


def _describe(exc: ValidationError, name_of_value: str = "?") -> str:
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else name_of_value
        if error["type"] == "missing":
            problems.append(f"{name} is not set")
        else:
            # Never echo the rejected value: it may be a password or a connection string.
            problems.append(f"{name}: {error['msg']}")
    return "invalid configuration: " + "; ".join(problems)


def in_window(window: str, minute_of_day: int) -> bool:
    """Whether ``minute_of_day`` (UTC) lies in an "HH:MM-HH:MM" window (may wrap midnight)."""
    if not window.strip():
        return True
    start_text, _, end_text = window.partition("-")
    start, end = _minutes(start_text), _minutes(end_text)
    if start <= end:
        return start <= minute_of_day < end
    return minute_of_day >= start or minute_of_day < end


def _minutes(text: str) -> int:
    hours, _, minutes = text.strip().partition(":")
    return int(hours) * 60 + int(minutes or 0)
