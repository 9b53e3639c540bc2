"""Apply the schema migrations (Alembic) to the backup database.

Alembic and SQLAlchemy are imported inside the functions (about 0.25 s): every CLI command
imports this module, and only the ones that migrate should pay for them.
"""

from __future__ import annotations

import logging
import threading
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from psycopg import sql

from backup_pipeline import db
from backup_pipeline.settings import Settings
from backup_pipeline.topics import TOPICS

if TYPE_CHECKING:
    import sqlalchemy
    from alembic.config import Config

# Our own name, so an earlier implementation's history table (Flyway's
# flyway_schema_history, another Alembic project's alembic_version) is left alone.
VERSION_TABLE = "backup_pipeline_schema_version"
MIGRATION_LOCK_KEY = 7_345_001  # arbitrary, fixed: serialises concurrent migrators
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Alembic's context is module-global: threads of one process must take turns (processes
# are kept apart by the advisory lock in env.py).
_ALEMBIC_LOCK = threading.Lock()


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _engine(settings: Settings) -> sqlalchemy.Engine:
    import sqlalchemy

    # psycopg's own connect (not a SQLAlchemy URL) so that DATABASE_URL, the PG* variables
    # and TLS parameters are read exactly as everywhere else in the project.
    return sqlalchemy.create_engine(
        "postgresql+psycopg://",
        creator=lambda: db.connect(settings),
        poolclass=sqlalchemy.pool.NullPool,
    )


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(settings: Settings) -> str | None:
    from alembic.runtime.migration import MigrationContext

    engine = _engine(settings)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(
                connection, opts={"version_table": VERSION_TABLE}
            ).get_current_revision()
    finally:
        engine.dispose()


def migrate(settings: Settings) -> tuple[str | None, str]:
    """Apply pending migrations; idempotent. Returns (revision before, revision after)."""
    # Every backup run starts here: when nothing is pending, one query answers it, without
    # loading Alembic and SQLAlchemy (~0.4 s of a no-op pass's start-up).
    head = head_from_file_names()
    if recorded_revision(settings) == head:
        return head, head

    from alembic import command

    # Alembic announces each of its plugins at INFO ("setup plugin ..."): six lines of
    # noise in every first run's log, nothing an operator acts on.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    before = current_revision(settings)
    config = _alembic_config()
    engine = _engine(settings)
    try:
        with _ALEMBIC_LOCK, engine.begin() as connection:
            config.attributes["connection"] = connection
            # Which topic feeds which table is configuration; migration 0005 needs it to
            # record the versions an existing database already holds.
            config.attributes["topic_names"] = {s.table: settings.topic(s) for s in TOPICS}
            command.upgrade(config, "head")
    finally:
        engine.dispose()
    return before, head_revision()


def head_from_file_names() -> str:
    """The newest revision without Alembic: the history is linear and each script is named
    after its revision (``NNNN_what.py``, ``revision = "NNNN"``); a test pins this to
    Alembic's own head."""
    scripts = (MIGRATIONS_DIR / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")
    return max(path.name.partition("_")[0] for path in scripts)


def recorded_revision(settings: Settings) -> str | None:
    """The revision stored in the history table, read with plain psycopg (None: none yet)."""
    with closing(db.connect(settings, autocommit=True)) as conn:
        found = conn.execute("SELECT to_regclass(%s)", (VERSION_TABLE,)).fetchone()
        if found is None or found[0] is None:
            return None
        rows = conn.execute(
            sql.SQL("SELECT version_num FROM {}").format(sql.Identifier(VERSION_TABLE))
        ).fetchall()
    return str(rows[0][0]) if len(rows) == 1 else None
