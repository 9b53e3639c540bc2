"""``backup-pipeline decode``: decode the Avro tables into their typed tables."""

from __future__ import annotations

import click

from backup_pipeline.cli.common import friendly_errors, maybe_migrate, tables_option
from backup_pipeline.settings import load_settings

AVRO_TABLE_NAMES = ("bekreftelser", "bekreftelse_paa_vegne_av")


@click.command("decode")
@tables_option(AVRO_TABLE_NAMES, "Only these raw tables (default: both Avro tables).")
@click.option(
    "--retry-undecodable",
    is_flag=True,
    help="Retry every open undecodable row (e.g. after a new vendored schema); rows waiting "
    "for a schema id that became known are retried on every pass anyway.",
)
@click.option(
    "--max-rows", type=int, default=None, help="Stop each table after this many raw rows."
)
@click.option(
    "--follow",
    "follow_seconds",
    type=float,
    default=None,
    help="Keep decoding new raw rows for this many seconds.",
)
@click.option(
    "--acknowledge-up-to",
    type=int,
    default=None,
    help="Instead of decoding: mark open undecodable rows with id <= this as reviewed.",
)
@click.option("--by", default="", help="Who acknowledges (with --acknowledge-up-to).")
@click.option("--note", default="", help="Why (with --acknowledge-up-to).")
@click.option("--no-migrate", is_flag=True, help="Do not apply pending migrations first.")
@friendly_errors
def decode_command(
    tables: tuple[str, ...],
    retry_undecodable: bool,
    max_rows: int | None,
    follow_seconds: float | None,
    acknowledge_up_to: int | None,
    by: str,
    note: str,
    no_migrate: bool,
) -> None:
    """Decode new raw Avro rows into bekreftelser_decoded / bekreftelse_paa_vegne_av_decoded
    and print what was decoded and what could not be (listed in backup_undecodable)."""
    from contextlib import closing

    from backup_pipeline import db
    from backup_pipeline.decode import run, undecodable
    from backup_pipeline.decode.catalog import AVRO_TABLES, avro_table

    settings = load_settings()
    maybe_migrate(settings, no_migrate)
    chosen = [avro_table(t) for t in tables] if tables else list(AVRO_TABLES)
    if acknowledge_up_to is not None:
        if not by:
            raise click.UsageError("--acknowledge-up-to needs --by")
        with closing(db.connect(settings)) as conn:
            for table in chosen:
                n = undecodable.acknowledge(conn, table, acknowledge_up_to, by, note)
                click.echo(f"{table.raw_table}: acknowledged {n} undecodable row(s)")
        return
    if follow_seconds is not None:
        reports = run.follow(settings, chosen, seconds=follow_seconds)
    else:
        reports = run.decode_once(settings, chosen, retry_all=retry_undecodable, max_rows=max_rows)
    with closing(db.connect(settings)) as conn:
        for report in reports:
            st = undecodable.status(conn, avro_table(report.table))
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(st.by_kind.items())) or "none"
            click.echo(
                f"{report.table}: decoded {report.decoded} new, re-decoded "
                f"{report.redecoded}, undecodable {report.undecodable} new; table has "
                f"{st.decoded_rows} rows, {st.open_undecodable} open undecodable ({kinds}), "
                f"{st.unacknowledged} unacknowledged; schema ids "
                f"{', '.join(map(str, st.schema_ids)) or 'none'}"
            )
