"""librdkafka configuration for consumers, producers and admin clients, from Settings."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from backup_pipeline.errors import ConfigError
from backup_pipeline.settings import Settings

# confluent-kafka insists on a group.id even for assign()-only consumers. Nothing is ever
# committed under it, but librdkafka still looks up the group's coordinator
# (FindCoordinator), which needs DESCRIBE on this group -- and nothing more (no READ: the
# consumer never joins the group, fetches or commits offsets). See docs/security.md.
CONSUMER_GROUP_ID = "backup-pipeline-no-commit"

# librdkafka's own log lines land here (Dagster captures backup_pipeline.*; the CLI shows
# them only at WARNING, see logs.py): a client that cannot reach its broker repeats the
# same error every reconnect backoff, which printed 150-200 lines before our one-line error.
LIBRDKAFKA_LOGGER = "backup_pipeline.librdkafka"


class RateLimitedLog:
    """The ``logger`` librdkafka writes to: one line per (client, facility) per
    ``interval`` seconds; the next line that gets through says how many were held back.

    librdkafka calls ``log(level, "%s [%s] %s", facility, client, message)``, from
    whichever thread serves its log queue, hence the lock.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}

    def log(self, level: int, msg: str, *args: Any, **_: Any) -> None:
        if len(args) == 3:
            facility, client, text = map(str, args)
        else:
            facility, client, text = "", "", (msg % args if args else msg)
        key = (client, facility)
        with self._lock:
            now = self._clock()
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._held[key] = self._held.get(key, 0) + 1
                return
            self._last[key] = now
            held = self._held.pop(key, 0)
        more = f" ({held} more like it held back)" if held else ""
        # The client retries on its own: what fails for good surfaces as our own error, so
        # these lines are detail (INFO), not the operator's alarm.
        self._logger.log(
            min(level, logging.INFO), "librdkafka %s [%s] %s%s", facility, client, text, more
        )


def serve_admin_log(admin: Any) -> None:
    """Hand an AdminClient's queued librdkafka log lines to the logger: it serves them only
    on poll(). Call it when an admin request failed, so the reason reaches the run log."""
    admin.poll(0)


def _common(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_brokers,
        "security.protocol": settings.kafka_security_protocol,
        "client.id": "backup-pipeline",
        # Errors only, through Python logging (never straight to stderr), rate-limited.
        "log_level": 3,
        "logger": RateLimitedLog(logging.getLogger(LIBRDKAFKA_LOGGER)),
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        # The broker's certificate must match the host name we connect to (librdkafka's
        # default since 2.0; stated so that no one "fixes" it to none).
        config["ssl.endpoint.identification.algorithm"] = "https"
        if settings.kafka_ca_path:  # else the system's CA store
            config["ssl.ca.location"] = _readable_file("KAFKA_CA_PATH", settings.kafka_ca_path)
        if bool(settings.kafka_certificate_path) != bool(settings.kafka_private_key_path):
            raise ConfigError(
                "KAFKA_CERTIFICATE_PATH and KAFKA_PRIVATE_KEY_PATH must be set together "
                "(client certificate and its private key)"
            )
        if settings.kafka_certificate_path and settings.kafka_private_key_path:
            config["ssl.certificate.location"] = _readable_file(
                "KAFKA_CERTIFICATE_PATH", settings.kafka_certificate_path
            )
            config["ssl.key.location"] = _readable_file(
                "KAFKA_PRIVATE_KEY_PATH", settings.kafka_private_key_path
            )
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


def _readable_file(variable: str, path: str) -> str:
    # librdkafka would fail later with a message naming its own property, not our variable.
    # The path is shown (it is not a secret), never the file's content.
    if not os.path.isfile(path):
        raise ConfigError(f"{variable}: no such file: {path}")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{variable}: file is not readable by this user: {path}")
    return path


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
            # Bound the prefetch queue so memory does not grow with the backlog. Measured
            # here: 8 MB halves the read rate (91k vs 214k records/s), 32 MB costs ~50 MB
            # of RSS more; the pass peaks near 160 MB whatever the backlog.
            "queued.max.messages.kbytes": 32768,
            "fetch.max.bytes": 16 * 1024 * 1024,
            # At a partition's end the broker holds a fetch this long before answering
            # "nothing new": short, so a pass that is nearly caught up ends promptly.
            "fetch.wait.max.ms": 100,
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
