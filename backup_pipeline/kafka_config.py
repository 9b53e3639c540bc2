"""librdkafka configuration for consumers, producers and admin clients, from Settings."""

from __future__ import annotations

from typing import Any

from backup_pipeline.errors import ConfigError
from backup_pipeline.settings import Settings

# confluent-kafka insists on a group.id even for assign()-only consumers. Nothing is ever
# committed under it, so it needs no ACL beyond what librdkafka asks for at start-up.
CONSUMER_GROUP_ID = "backup-pipeline-no-commit"


def _common(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_brokers,
        "security.protocol": settings.kafka_security_protocol,
        "client.id": "backup-pipeline",
        # librdkafka logs through Python logging only when asked; keep its chatter down.
        "log_level": 3,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        if settings.kafka_ca_path:
            config["ssl.ca.location"] = settings.kafka_ca_path
        if settings.kafka_certificate_path:
            config["ssl.certificate.location"] = settings.kafka_certificate_path
        if settings.kafka_private_key_path:
            config["ssl.key.location"] = settings.kafka_private_key_path
    if settings.kafka_security_protocol.startswith("SASL"):
        if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
            raise ConfigError(
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD must be set when "
                f"KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}"
            )
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    return config


def consumer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    config = _common(settings)
    config.update(
        {
            "group.id": CONSUMER_GROUP_ID,
            # Postgres holds the only truth about progress: never commit, never store.
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Aborted transactions are never backed up; end offsets are last stable offsets.
            "isolation.level": "read_committed",
            # Tells us where readable records end when the last offsets are markers.
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
            # Bound the prefetch queue so memory does not grow with the backlog.
            "queued.max.messages.kbytes": 32768,
            "fetch.max.bytes": 16 * 1024 * 1024,
        }
    )
    config.update(overrides)
    return config


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    config = _common(settings)
    config.update({"acks": "all", "enable.idempotence": True, "linger.ms": 20})
    config.update(overrides)
    return config


def admin_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    config = _common(settings)
    config.update(overrides)
    return config
