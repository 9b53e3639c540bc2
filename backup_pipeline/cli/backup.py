"""``backup-pipeline migrate``, ``backup`` and ``status``: the backup's own commands."""

from __future__ import annotations

import sys
from contextlib import closing
from typing import TYPE_CHECKING

import click

from backup_pipeline.cli.common import friendly_errors, maybe_migrate, tables_option
from backup_pipeline.settings import load_settings
from backup_pipeline.topics import TABLES, TOPICS, TopicSpec

# Each command imports the engine modules it uses: `backup-pipeline --help` and a command
# that fails on its settings should not wait for the engine, Kafka's admin client or logs.
if TYPE_CHECKING:
    from backup_pipeline.settings import Settings
    from backup_pipeline.versions import VersionState


@click.command("migrate")
@friendly_errors
def migrate_command() -> None:
    """Apply pending schema migrations (idempotent)."""
    from backup_pipeline import db, migrate

    settings = load_settings()
    before, after = migrate.migrate(settings)
    if before == after:
        click.echo(f"schema is up to date at revision {after} ({db.describe(settings)})")
    else:
        click.echo(f"migrated {db.describe(settings)} from {before or 'empty'} to {after}")


_PROMOTE_HELP = (
    "Make a caught-up re-ingestion the serving version (and retire the old one), as the "
    "deployment's sensors do; without it the command only says what this would do."
)


@click.command("backup")
@tables_option(TABLES, "Only these tables (default: all).")
@click.option(
    "--max-records",
    type=int,
    default=None,
    help="Stop each pass after this many records (default BACKUP_MAX_RECORDS_PER_PASS).",
)
@click.option(
    "--version",
    type=click.IntRange(1, 32767),
    default=None,
    help="Write into this version only (default: the serving version, and the one being "
    "re-ingested if any).",
)
@click.option("--allow-retired", is_flag=True, help="Allow --version to name a retired version.")
@click.option("--promote", is_flag=True, help=_PROMOTE_HELP)
@click.option(
    "--wait",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for a running pass (a Dagster follow run) to hand the topic over; "
    "0: skip a topic another pass holds.",
)
@click.option("--no-migrate", is_flag=True, help="Do not apply pending migrations first.")
@friendly_errors
def backup_command(
    tables: tuple[str, ...],
    max_records: int | None,
    version: int | None,
    allow_retired: bool,
    promote: bool,
    wait: float,
    no_migrate: bool,
) -> None:
    """Run one backup pass per topic and version and print the reports."""
    from backup_pipeline.backup.run import backup_topic

    settings = load_settings()
    maybe_migrate(settings, no_migrate)
    failed = False
    for spec in TOPICS:
        if tables and spec.table not in tables:
            continue
        # As a sensor tick does: the serving version, and the target while it catches up.
        targets = [version] if version is not None else _reconcile(settings, spec).live_versions
        for v in targets:
            report = backup_topic(
                settings,
                spec,
                version=v,
                max_records=max_records,
                allow_retired=allow_retired,
                lock_wait_seconds=wait,
            )
            click.echo(report.summary())
            failed = failed or bool(report.errors)
        state = _reconcile(settings, spec, promote=promote)
        click.echo(f"{spec.table}: {state.summary()}")
        _echo_promotion_due(spec.table, state)
    if failed:
        sys.exit(1)


def _echo_promotion_due(table: str, state: VersionState) -> None:
    """A one-shot command moves the serving version only with --promote; say what that
    would do when the re-ingestion has caught up."""
    if state.promotion_due:
        click.echo(
            f"{table}: --promote would make version {state.target} serving and retire version "
            f"{state.serving} (it has caught up: lag {state.target_lag}; the deployment's "
            "sensors do this by themselves)"
        )


def _reconcile(settings: Settings, spec: TopicSpec, *, promote: bool = False) -> VersionState:
    """Record BACKUP_VERSION and, with ``promote``, promote a caught-up re-ingestion
    (versions.reconcile)."""
    from backup_pipeline import db, status, versions
    from backup_pipeline.kafka import client

    consumer = client.open_consumer(settings)
    try:
        marks = status.snapshot(consumer, settings.topic(spec), settings.kafka_timeout_seconds)
        with closing(db.connect(settings, autocommit=True)) as conn:
            return versions.reconcile(
                conn,
                spec,
                settings.topic(spec),
                settings.backup_version,
                marks,
                caught_up_max_lag=settings.backup_caught_up_max_lag,
                promote=promote,
                allow_downgrade=settings.backup_allow_downgrade,
            )
    finally:
        consumer.close()


@click.command("status")
@tables_option(TABLES, "Only these tables (default: all).")
@click.option(
    "--version",
    type=int,
    default=None,
    help="Show this version (default: the serving one, and the one being re-ingested).",
)
@click.option("--promote", is_flag=True, help=_PROMOTE_HELP)
@friendly_errors
def status_command(tables: tuple[str, ...], version: int | None, promote: bool) -> None:
    """Per table: versions and re-ingestion progress, unacknowledged problems; per
    partition: HWM, end offset, lag, quarantined and lost records."""
    from backup_pipeline import db, status
    from backup_pipeline.kafka import client

    settings = load_settings()
    consumer = client.open_consumer(settings)
    try:
        with closing(db.connect(settings, autocommit=True)) as conn:
            statuses = [
                status.table_status(
                    conn,
                    consumer,
                    spec,
                    settings.topic(spec),
                    settings.backup_version,
                    caught_up_max_lag=settings.backup_caught_up_max_lag,
                    timeout=settings.kafka_timeout_seconds,
                    version=version,
                    promote=promote,
                    allow_downgrade=settings.backup_allow_downgrade,
                )
                for spec in TOPICS
                if not tables or spec.table in tables
            ]
    finally:
        consumer.close()
    click.echo(status.render(statuses))
    for table_status in statuses:
        _echo_promotion_due(table_status.table, table_status.state)
