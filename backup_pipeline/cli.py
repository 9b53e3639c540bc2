"""The operator CLI: ``backup-pipeline migrate | backup | status | restore | verify | ...``."""

from __future__ import annotations

import logging
import sys
from contextlib import closing

import click
import pandas as pd
from confluent_kafka.admin import AdminClient

from backup_pipeline import backup, db, logs, migrate, status, versions
from backup_pipeline.cli_common import friendly_errors, maybe_migrate
from backup_pipeline.cli_restore import restore_command, verify_command
from backup_pipeline.kafka_config import admin_config
from backup_pipeline.settings import Settings, load_settings
from backup_pipeline.topics import TABLES, TOPICS, spec_for_table


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(verbose: bool) -> None:
    """Keep an exactly-once copy of Kafka topics in PostgreSQL."""
    logs.configure(logging.DEBUG if verbose else logging.INFO)


def _settings() -> Settings:
    return load_settings()


@main.command("migrate")
@friendly_errors
def migrate_command() -> None:
    """Apply pending schema migrations (idempotent)."""
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
@click.option("--no-migrate", is_flag=True, help="Do not apply pending migrations first.")
@friendly_errors
def backup_command(tables: tuple[str, ...], max_records: int | None, no_migrate: bool) -> None:
    """Run one backup pass per topic and print the report."""
    settings = _settings()
    maybe_migrate(settings, no_migrate)
    failed = False
    for spec in TOPICS:
        if tables and spec.table not in tables:
            continue
        report = backup.backup_topic(settings, spec, max_records=max_records)
        click.echo(report.summary())
        failed = failed or bool(report.errors)
    if failed:
        sys.exit(1)


@main.command("status")
@friendly_errors
def status_command() -> None:
    """Per topic and partition: HWM, end offset, lag, quarantined and lost records."""
    settings = _settings()
    consumer = backup.open_consumer(settings)
    try:
        with closing(db.connect(settings, autocommit=True)) as conn:
            rows = []
            for spec in TOPICS:
                for part in status.topic_status(
                    conn,
                    consumer,
                    spec,
                    settings.topic(spec),
                    versions.resolve_read_version(conn, spec.table, settings.backup_version),
                    settings.kafka_timeout_seconds,
                ):
                    rows.append(
                        {
                            "table": part.table,
                            "topic": part.topic,
                            "version": part.version,
                            "partition": part.partition,
                            "hwm": part.hwm,
                            "end_offset": part.end_offset,
                            "lag": part.lag,
                            "quarantined": part.quarantined,
                            "lost": part.lost,
                        }
                    )
    finally:
        consumer.close()
    click.echo(pd.DataFrame(rows).to_string(index=False) if rows else "no partitions")


@main.command("create-topics")
@click.option("--partitions", default=3, show_default=True)
@friendly_errors
def create_topics_command(partitions: int) -> None:
    """Create the three topics if they don't exist (for the demo and local testing)."""
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
