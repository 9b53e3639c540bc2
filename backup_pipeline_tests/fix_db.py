"""Fixture plugin: PostgreSQL databases of a test's own (fresh, migrated from a per-session
template, dropped afterwards), and what a backup stored in them."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from backup_pipeline.migrate import migrate
from backup_pipeline.settings import load_settings
from dev.harness.db import with_dbname


def admin_execute(services: dict[str, str], statement: str) -> None:
    with psycopg.connect(services["DATABASE_URL"], autocommit=True) as conn:
        conn.execute(statement)


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
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


def stored_offsets(conn: psycopg.Connection, table: str, version: int = 1) -> list[tuple[int, int]]:
    return [
        tuple(r)
        for r in conn.execute(
            f"SELECT kafka_partition, kafka_offset FROM {table} WHERE version = %s ORDER BY 1, 2",
            (version,),
        ).fetchall()
    ]


def quarantined(
    conn: psycopg.Connection, topic: str, version: int = 1
) -> list[tuple[int, int, str]]:
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT kafka_partition, kafka_offset, reason FROM backup_quarantine "
            "WHERE kafka_topic = %s AND version = %s ORDER BY 1, 2",
            (topic, version),
        ).fetchall()
    ]
