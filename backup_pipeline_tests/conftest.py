"""Fixtures for tests against the real Kafka broker and PostgreSQL from dev/services.

`make test` starts the services and exports KAFKA_BROKERS and DATABASE_URL; run alone,
pytest starts them itself. A test that needs a service never skips: if the services
cannot start, the test errors.

Tiers: a test gets the `services` marker from the fixtures it uses (any that reach Kafka
or PostgreSQL) and `browser` when its module drives Chromium, so nobody has to remember
to mark one; `make test-fast` runs the rest (`-m "not services and not browser"`).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from backup_pipeline.kafka.admin import create_topics
from backup_pipeline.migrate import migrate
from backup_pipeline.settings import Settings, load_settings
from backup_pipeline.topics import TOPICS
from backup_pipeline_tests import waits
from backup_pipeline_tests.support import (
    REPO,
    DagsterServer,
    admin_execute,
    make_settings,
    service_env,
    with_dbname,
)

if TYPE_CHECKING:
    import dagster as dg

# Fixtures that start or reach the real services: a test whose fixture closure holds one
# of them is in the `services` tier.
SERVICE_FIXTURES = frozenset({"services", "fault_services"})
BROWSER_MODULE = "backup_pipeline_tests.browser"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # The pytest timeout grows with the waits it bounds (BACKUP_TEST_TIME_SCALE, waits.py);
    # before pytest-timeout reads it. An explicit --timeout is taken as given.
    if config.getoption("timeout", None) is None and config.getini("timeout"):
        config.option.timeout = float(config.getini("timeout")) * waits.TIME_SCALE


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> None:
    # pytest-timeout's clock covers setup, call and teardown; waits.wait_until ends a wait
    # before it runs out, with a message naming what it waited for.
    marker = item.get_closest_marker("timeout")
    timeout = marker.args[0] if marker and marker.args else item.config.getoption("timeout")
    waits.start_test_clock(float(timeout) if timeout else None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # A test's own @pytest.mark.timeout(seconds) is in idle-machine seconds too.
        marker = item.get_closest_marker("timeout")
        if marker and marker.args:
            item.add_marker(pytest.mark.timeout(waits.scaled(float(marker.args[0]))), append=False)
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
        module = getattr(item, "module", None)
        if module is not None and any(
            getattr(value, "__module__", None) == BROWSER_MODULE for value in vars(module).values()
        ):
            item.add_marker(pytest.mark.browser)


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


@pytest.fixture(scope="session")
def template_database(services: dict[str, str]) -> Iterator[str]:
    """A database migrated once per session, copied for every test that needs one."""
    name = f"bp_template_{os.getpid()}"
    admin_execute(services, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin_execute(services, f'CREATE DATABASE "{name}"')
    url = with_dbname(services["DATABASE_URL"], name)
    migrate(load_settings({"KAFKA_BROKERS": services["KAFKA_BROKERS"], "DATABASE_URL": url}))
    yield name
    admin_execute(services, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def scratch_database(
    services: dict[str, str], prefix: str, template: str | None = None
) -> Iterator[str]:
    """A database of its own (a copy of ``template``, if given), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    admin_execute(services, f'CREATE DATABASE "{name}"{copy}')
    try:
        yield with_dbname(services["DATABASE_URL"], name)
    finally:
        admin_execute(services, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_database_url(services: dict[str, str]) -> Iterator[str]:
    with scratch_database(services, "bp_test") as url:
        yield url


@pytest.fixture
def database_url(services: dict[str, str], template_database: str) -> Iterator[str]:
    """A fresh, fully migrated database of its own."""
    with scratch_database(services, "bp_test", template_database) as url:
        yield url


@pytest.fixture
def new_dagster_server(
    tmp_path: Path, services: dict[str, str], database_url: str, topic_names: dict[str, str]
) -> Iterator[Callable[..., DagsterServer]]:
    """Build a support.DagsterServer (started by the test) on this test's database and
    topics, a Dagster storage database of its own, version 1, a sensor tick every 5 s, plus
    ``extra`` settings; stopped at teardown with a short grace, as nothing waits then."""
    servers: list[DagsterServer] = []
    with scratch_database(services, "bp_dagster") as storage_url:
        env = service_env(
            services,
            database_url,
            topic_names,
            DAGSTER_PG_URL=storage_url,
            BACKUP_SENSOR_INTERVAL_SECONDS="5",
            BACKUP_VERSION="1",
        )

        def build(**extra: str) -> DagsterServer:
            server = DagsterServer(tmp_path / f"dagster_home_{len(servers)}", {**env, **extra})
            servers.append(server)
            return server

        try:
            yield build
        finally:
            for server in servers:
                server.stop(grace=10)


@pytest.fixture
def admin(services: dict[str, str]) -> AdminClient:
    return AdminClient({"bootstrap.servers": services["KAFKA_BROKERS"]})


@pytest.fixture
def topic_names(admin: AdminClient) -> dict[str, str]:
    """Three fresh topics (3 partitions each) named for this test only: table -> topic."""
    suffix = uuid.uuid4().hex[:10]
    names = {spec.table: f"test.{spec.table}.{suffix}" for spec in TOPICS}
    create_topics(admin, list(names.values()), partitions=3)
    return names


@pytest.fixture
def settings(services: dict[str, str], database_url: str, topic_names: dict[str, str]) -> Settings:
    return make_settings(services, database_url, topic_names)


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def producer(services: dict[str, str]) -> Iterator[Producer]:
    producer = Producer(
        {"bootstrap.servers": services["KAFKA_BROKERS"], "linger.ms": 5, "enable.idempotence": True}
    )
    yield producer
    producer.flush(30)


@pytest.fixture
def pg_instance(services: dict[str, str]) -> Iterator[tuple[dg.DagsterInstance, str]]:
    """A Dagster instance on a PostgreSQL database of its own (dagster.yaml's
    ``storage: postgres``), and that database's URL."""
    import dagster as dg  # here: most tests never need Dagster, and it takes seconds to load

    with (
        scratch_database(services, "bp_dagster") as url,
        dg.instance_for_test(
            overrides={"storage": {"postgres": {"postgres_url": url}}}
        ) as instance,
    ):
        yield instance, url
