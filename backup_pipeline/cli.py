"""The operator CLI: ``backup-pipeline migrate | backup | status | acknowledge | restore |
verify | ...``."""

from __future__ import annotations

import logging
import sys
from contextlib import closing
from typing import TYPE_CHECKING, Literal

import click

from backup_pipeline.cli_common import friendly_errors, maybe_migrate
from backup_pipeline.cli_restore import restore_command, verify_command
from backup_pipeline.topics import TABLES, TOPICS, TopicSpec, spec_for_table

# Each command imports the engine modules it uses: `backup-pipeline --help` and a command
# that fails on its settings should not wait for the engine, Kafka's admin client or logs.
if TYPE_CHECKING:
    from backup_pipeline.settings import Settings
    from backup_pipeline.versions import VersionState


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(verbose: bool) -> None:
    """Keep an exactly-once copy of Kafka topics in PostgreSQL."""
    from backup_pipeline import logs

    logs.configure(logging.DEBUG if verbose else logging.INFO)


def _settings() -> Settings:
    from backup_pipeline.settings import load_settings

    return load_settings()


@main.command("migrate")
@friendly_errors
def migrate_command() -> None:
    """Apply pending schema migrations (idempotent)."""
    from backup_pipeline import db, migrate

    settings = _settings()
    before, after = migrate.migrate(settings)
    if before == after:
        click.echo(f"schema is up to date at revision {after} ({db.describe(settings)})")
    else:
        click.echo(f"migrated {db.describe(settings)} from {before or 'empty'} to {after}")


@main.command("backup")
@click.option(
    "--table",
    "tables",
    multiple=True,
    type=click.Choice(TABLES),
    help="Only these tables (default: all).",
)
@click.option(
    "--max-records",
    type=int,
    default=None,
    help="Stop each pass after this many records (default BACKUP_MAX_RECORDS_PER_PASS).",
)
@click.option(
    "--version",
    type=int,
    default=None,
    help="Write into this version only (default: the serving version, and the one being "
    "re-ingested if any).",
)
@click.option("--allow-retired", is_flag=True, help="Allow --version to name a retired version.")
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
    wait: float,
    no_migrate: bool,
) -> None:
    """Run one backup pass per topic and version and print the reports."""
    from backup_pipeline import backup

    settings = _settings()
    maybe_migrate(settings, no_migrate)
    failed = False
    for spec in TOPICS:
        if tables and spec.table not in tables:
            continue
        if version is not None:
            targets = [version]
        else:
            # As a sensor tick does: the serving version, and the target while it catches up.
            state = _reconcile(settings, spec)
            targets = [state.serving] + ([state.target] if state.reingesting else [])
        for v in targets:
            report = backup.backup_topic(
                settings,
                spec,
                version=v,
                max_records=max_records,
                allow_retired=allow_retired,
                lock_wait_seconds=wait,
            )
            click.echo(report.summary())
            failed = failed or bool(report.errors)
        click.echo(f"{spec.table}: {_reconcile(settings, spec).summary()}")
    if failed:
        sys.exit(1)


def _reconcile(settings: Settings, spec: TopicSpec) -> VersionState:
    """Record BACKUP_VERSION and promote a caught-up re-ingestion (versions.reconcile)."""
    from backup_pipeline import backup, db, status, versions

    consumer = backup.open_consumer(settings)
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
            )
    finally:
        consumer.close()


@main.command("status")
@click.option(
    "--table",
    "tables",
    multiple=True,
    type=click.Choice(TABLES),
    help="Only these tables (default: all).",
)
@click.option(
    "--version",
    type=int,
    default=None,
    help="Show this version (default: the serving one, and the one being re-ingested).",
)
@friendly_errors
def status_command(tables: tuple[str, ...], version: int | None) -> None:
    """Per table: versions and re-ingestion progress, unacknowledged problems; per
    partition: HWM, end offset, lag, quarantined and lost records."""
    from backup_pipeline import backup, db, status

    settings = _settings()
    consumer = backup.open_consumer(settings)
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
                )
                for spec in TOPICS
                if not tables or spec.table in tables
            ]
    finally:
        consumer.close()
    click.echo(status.render(statuses))


@main.command("acknowledge")
@click.option("--table", required=True, type=click.Choice(TABLES), help="Backed-up table.")
@click.option("--quarantine", "what", flag_value="quarantine", help="Quarantined records.")
@click.option("--gaps", "what", flag_value="gaps", help="Offsets lost to retention.")
@click.option("--by", required=True, help="Who reviewed them (recorded).")
@click.option("--note", required=True, help="What was found or done (recorded).")
@click.option(
    "--up-to-id",
    type=int,
    default=None,
    help="Only rows with id <= N (the ones you reviewed; later ones stay open).",
)
@click.option("--version", type=int, default=None, help="Version (default: the serving one).")
@friendly_errors
def acknowledge_command(
    table: str,
    what: Literal["quarantine", "gaps"] | None,
    by: str,
    note: str,
    up_to_id: int | None,
    version: int | None,
) -> None:
    """Record that quarantined records or lost offsets were reviewed; nothing is deleted.

    Checks and status count only unacknowledged ones, so they settle once dealt with.
    """
    from backup_pipeline import acknowledge, db, versions

    if what is None:
        raise click.UsageError("give --quarantine or --gaps")
    settings = _settings()
    spec = spec_for_table(table)
    topic = settings.topic(spec)
    with closing(db.connect(settings, autocommit=True)) as conn:
        version = versions.resolve_read_version(conn, table, version)
        done = acknowledge.acknowledge_rows(conn, table, topic, version, what, by, note, up_to_id)
        left = acknowledge.unacknowledged(conn, topic, version)
    kind = "quarantined records" if what == "quarantine" else "lost offsets"
    ids = f" (ids {done.ids[0]}..{done.ids[-1]})" if done.ids else ""
    click.echo(
        f"acknowledged {done.count} {what} rows{ids}, {done.records} {kind}, of {table} "
        f"version {version} (topic {topic}) by {by}: {note}"
    )
    click.echo(f"{table} version {version}: {left.describe()}")


@main.command("create-topics")
@click.option("--partitions", default=3, show_default=True)
@friendly_errors
def create_topics_command(partitions: int) -> None:
    """Create the three topics if they don't exist (for the demo and local testing)."""
    from confluent_kafka.admin import AdminClient

    from backup_pipeline.kafka_config import admin_config
    from backup_pipeline.topics_admin import create_topics

    settings = _settings()
    admin = AdminClient(admin_config(settings))
    created = create_topics(admin, [settings.topic(s) for s in TOPICS], partitions)
    click.echo(f"created: {', '.join(created) or 'none (all exist)'}")


@main.command("demo-producer")
@click.option("--rate", default=20.0, show_default=True, help="Records per second in all.")
@click.option("--seconds", type=float, default=None, help="Stop after this long.")
@click.option(
    "--awkward-share",
    default=0.02,
    show_default=True,
    help="Share of awkward records (tombstones, bad JSON, short keys, ...).",
)
@friendly_errors
def demo_producer_command(rate: float, seconds: float | None, awkward_share: float) -> None:
    """Write realistic records to the three topics until stopped."""
    from backup_pipeline import demo

    settings = _settings()
    click.echo(f"producing {rate:g} records/s to {', '.join(settings.topic(s) for s in TOPICS)}")
    sent = demo.produce(settings, rate=rate, seconds=seconds, awkward_share=awkward_share)
    click.echo(f"produced {sent} records")


main.add_command(restore_command)
main.add_command(verify_command)

if __name__ == "__main__":
    main()

__all__ = ["main", "spec_for_table"]
