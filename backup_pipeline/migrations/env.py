"""Alembic environment: runs migrations on a connection handed in by backup_pipeline.migrate."""

from alembic import context
from sqlalchemy import text

from backup_pipeline.migrate import MIGRATION_LOCK_KEY, VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=VERSION_TABLE,
    # One transaction for all pending migrations: a failure leaves the schema as it was.
    transaction_per_migration=False,
)
with context.begin_transaction():
    # Several processes start at once (three Dagster runs, the CLI): only one migrates,
    # the others wait and then find nothing pending.
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    context.run_migrations()
