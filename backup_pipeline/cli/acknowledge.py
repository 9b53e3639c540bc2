"""``backup-pipeline acknowledge``: record that quarantine or gaps were reviewed."""

from __future__ import annotations

from contextlib import closing
from typing import Literal

import click

from backup_pipeline.cli.common import friendly_errors
from backup_pipeline.settings import load_settings
from backup_pipeline.topics import TABLES, spec_for_table


@click.command("acknowledge")
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
    settings = load_settings()
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
