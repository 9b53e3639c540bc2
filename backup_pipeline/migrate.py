"""Apply the schema migrations (Alembic) to the backup database."""

from __future__ import annotations

import threading
from pathlib import Path

import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from backup_pipeline import db
from backup_pipeline.settings import Settings
from backup_pipeline.topics import TOPICS

# Our own name, so an earlier implementation's history table (Flyway's
# flyway_schema_history, another Alembic project's alembic_version) is left alone.
VERSION_TABLE = "backup_pipeline_schema_version"
MIGRATION_LOCK_KEY = 7_345_001  # arbitrary, fixed: serialises concurrent migrators
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Alembic's context is module-global: threads of one process must take turns (processes
# are kept apart by the advisory lock in env.py).
_ALEMBIC_LOCK = threading.Lock()


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _engine(settings: Settings) -> sqlalchemy.Engine:
    # psycopg's own connect (not a SQLAlchemy URL) so that DATABASE_URL, the PG* variables
    # and TLS parameters are read exactly as everywhere else in the project.
    return sqlalchemy.create_engine(
        "postgresql+psycopg://",
        creator=lambda: db.connect(settings),
        poolclass=sqlalchemy.pool.NullPool,
    )


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(settings: Settings) -> str | None:
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
