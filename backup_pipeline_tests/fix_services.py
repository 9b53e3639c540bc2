"""Fixture plugin: the real Kafka and PostgreSQL of dev/services, and settings on them.

`make test` starts the services and exports KAFKA_BROKERS and DATABASE_URL; run alone,
pytest starts them itself. A test that needs a service never skips: if the services
cannot start, the test errors.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

import pytest

from backup_pipeline.settings import Settings, load_settings
from backup_pipeline.topics import TOPICS
from dev.harness.processes import REPO


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    if not (os.environ.get("KAFKA_BROKERS") and os.environ.get("DATABASE_URL")):
        # pytest run alone with -n: every worker gets here; one starts the services, the
        # others wait for the lock and find them running (`up` keeps what runs).
        state = Path(os.environ.get("BACKUP_DEV_STATE") or REPO / ".dev")
        state.mkdir(parents=True, exist_ok=True)
        with (state / "services.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            out = subprocess.run(
                [str(REPO / "dev" / "services"), "up"], check=True, capture_output=True, text=True
            ).stdout
        for line in out.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            os.environ[name] = value
    return {
        "KAFKA_BROKERS": os.environ["KAFKA_BROKERS"],
        "DATABASE_URL": os.environ["DATABASE_URL"],
    }


def service_env(
    services: dict[str, str],
    database_url: str,
    topic_names: dict[str, str] | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of a backup of ``topic_names`` (table -> topic) into ``database_url``."""
    env = {"KAFKA_BROKERS": services["KAFKA_BROKERS"], "DATABASE_URL": database_url}
    for spec in TOPICS:
        if topic_names and spec.table in topic_names:
            env[spec.topic_env_var] = topic_names[spec.table]
    env.update(extra)
    return env


def make_settings(
    services: dict[str, str],
    database_url: str,
    topic_names: dict[str, str] | None = None,
    **extra: str,
) -> Settings:
    return load_settings(service_env(services, database_url, topic_names, **extra))


@pytest.fixture
def settings(services: dict[str, str], database_url: str, topic_names: dict[str, str]) -> Settings:
    return make_settings(services, database_url, topic_names)
