"""Fixture plugin: Dagster on a test's own database, topics and storage (dev.harness.dagster)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from backup_pipeline_tests.fix_db import scratch_database
from backup_pipeline_tests.fix_services import service_env
from dev.harness.dagster import DagsterServer

if TYPE_CHECKING:
    import dagster as dg


@pytest.fixture
def new_dagster_server(
    tmp_path: Path, services: dict[str, str], database_url: str, topic_names: dict[str, str]
) -> Iterator[Callable[..., DagsterServer]]:
    """Build a DagsterServer (started by the test) on this test's database and topics, a
    Dagster storage database of its own, version 1, a sensor tick every 5 s, plus
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
