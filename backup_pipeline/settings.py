"""Settings from the environment, validated once, with errors that name the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from backup_pipeline import CURRENT_VERSION
from backup_pipeline.errors import ConfigError
from backup_pipeline.topics import TOPICS, TopicSpec


class Settings(BaseModel):
    """Everything the engine needs; each field is one environment variable."""

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
    kafka_sasl_mechanism: str = Field(
        default="SCRAM-SHA-512", validation_alias="KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str | None = Field(default=None, validation_alias="KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, validation_alias="KAFKA_SASL_PASSWORD"
    )
    kafka_timeout_seconds: float = Field(
        default=10.0, gt=0, le=50, validation_alias="KAFKA_TIMEOUT_SECONDS"
    )

    # Empty means: let libpq read PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE...
    database_url: SecretStr = Field(default=SecretStr(""), validation_alias="DATABASE_URL")

    backup_version: int = Field(
        default=CURRENT_VERSION, ge=0, le=32767, validation_alias="BACKUP_VERSION"
    )
    backup_batch_size: int = Field(
        default=5000, ge=1, le=1_000_000, validation_alias="BACKUP_BATCH_SIZE"
    )
    backup_batch_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, validation_alias="BACKUP_BATCH_BYTES"
    )
    backup_max_records_per_pass: int = Field(
        default=0, ge=0, validation_alias="BACKUP_MAX_RECORDS_PER_PASS"
    )
    backup_auto_migrate: bool = Field(default=True, validation_alias="BACKUP_AUTO_MIGRATE")

    topic_names: dict[str, str] = Field(default_factory=dict, exclude=True)

    @field_validator("kafka_brokers")
    @classmethod
    def _brokers_look_like_host_port(cls, value: str) -> str:
        for broker in value.split(","):
            host, _, port = broker.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError("expected host:port[,host:port...]")
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


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "?"
        if error["type"] == "missing":
            problems.append(f"{name} is not set")
        else:
            # Never echo the rejected value: it may be a password or a connection string.
            problems.append(f"{name}: {error['msg']}")
    return "invalid configuration: " + "; ".join(problems)
