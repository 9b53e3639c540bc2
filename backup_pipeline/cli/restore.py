"""``backup-pipeline restore`` and ``backup-pipeline verify`` (registered in cli/__init__.py)."""

from __future__ import annotations

import sys
import time
from contextlib import closing
from datetime import datetime

import click

from backup_pipeline import db
from backup_pipeline.cli.common import echo_versions, friendly_errors, maybe_migrate
from backup_pipeline.positions import plan as positions
from backup_pipeline.progress import TerminalProgress
from backup_pipeline.restore import bookkeeping
from backup_pipeline.restore.report import RestoreReport
from backup_pipeline.restore.run import RestoreRequest, restore, resume
from backup_pipeline.selection import Selection, restore_time
from backup_pipeline.settings import Settings, load_settings
from backup_pipeline.topics import TABLES
from backup_pipeline.verify.compare import verify


def _parse_offsets(values: tuple[str, ...]) -> dict[int, tuple[int | None, int | None]]:
    """``P:FIRST-LAST`` (either end may be left out, e.g. ``0:100-`` or ``2:-50``)."""
    ranges: dict[int, tuple[int | None, int | None]] = {}
    for value in values:
        try:
            partition, _, span = value.partition(":")
            first, _, last = span.partition("-")
            ranges[int(partition)] = (int(first) if first else None, int(last) if last else None)
        except ValueError:
            raise click.BadParameter(
                f"{value!r}: expected PARTITION:FIRST-LAST", param_hint="--offsets"
            ) from None
    return ranges


def _hex_keys(hexes: tuple[str, ...]) -> list[bytes]:
    try:
        return [bytes.fromhex(h) for h in hexes]
    except ValueError:
        raise click.BadParameter("expected hexadecimal bytes", param_hint="--key-hex") from None


@click.command("restore")
@click.option("--table", type=click.Choice(TABLES), help="Backed-up table to restore.")
@click.option("--topic", "source_topic", help="Or: the source topic whose backup to restore.")
@click.option(
    "--version", type=int, default=None, help="Backup version (default: the serving one)."
)
@click.option("--target", default=None, help="Target topic (default <topic>.restored-<UTC>).")
@click.option("--partition", "partitions", type=int, multiple=True, help="Only these.")
@click.option("--offsets", multiple=True, help="PARTITION:FIRST-LAST, inclusive; repeatable.")
@click.option("--since", default=None, help="Record timestamp >= this ISO-8601 time (naive = UTC).")
@click.option("--until", default=None, help="Record timestamp < this ISO-8601 time (naive = UTC).")
@click.option("--key", "keys", type=int, multiple=True, help="Record key (a long); repeatable.")
@click.option("--key-hex", "key_hexes", multiple=True, help="Record key bytes in hex.")
@click.option("--arbeidssoeker-id", "person_ids", type=int, multiple=True, help="Person id.")
@click.option("--include-quarantined", is_flag=True, help="Also restore quarantined records.")
@click.option("--no-origin-headers", is_flag=True, help="Do not add backup.source.* headers.")
@click.option("--force", is_flag=True, help="Allow the source topic or a non-empty target.")
@click.option(
    "--keep-source-retention",
    is_flag=True,
    help="A new target copies the source's retention too (default: keep every record).",
)
@click.option(
    "--allow-retention-loss",
    is_flag=True,
    help="Write even where the target's retention or compaction would drop restored records.",
)
@click.option(
    "--accept-new-timestamps",
    is_flag=True,
    help="Write into an existing LogAppendTime target, which stamps records with the "
    "time of the restore (a new target is created with CreateTime and keeps them).",
)
@click.option("--resume", "resume_run", type=int, default=None, help="Carry on run RUN_ID.")
@click.option(
    "--consumer-groups",
    default=None,
    help="all|G1,G2: translate these groups' recorded positions into the target and print "
    "the plan (after the restore completes; with --resume of a completed run: only that).",
)
@click.option("--as-of", default=None, help="Positions as of this time (ISO-8601, naive = UTC).")
@click.option("--apply", "apply_positions", is_flag=True, help="Commit the positions' plan.")
@click.option("--max-records", type=int, default=0, help="Stop after this many (resumable).")
@click.option("--no-migrate", is_flag=True, help="Do not apply pending migrations first.")
@friendly_errors
def restore_command(
    table: str | None,
    source_topic: str | None,
    version: int | None,
    target: str | None,
    partitions: tuple[int, ...],
    offsets: tuple[str, ...],
    since: str | None,
    until: str | None,
    keys: tuple[int, ...],
    key_hexes: tuple[str, ...],
    person_ids: tuple[int, ...],
    include_quarantined: bool,
    no_origin_headers: bool,
    force: bool,
    keep_source_retention: bool,
    allow_retention_loss: bool,
    accept_new_timestamps: bool,
    resume_run: int | None,
    consumer_groups: str | None,
    as_of: str | None,
    apply_positions: bool,
    max_records: int,
    no_migrate: bool,
) -> None:
    """Write backed-up records back to Kafka: same partition, key, value, headers, time."""
    if resume_run is None and not (table or source_topic):
        raise click.UsageError("give --table or --topic (or --resume RUN_ID)")
    if (as_of or apply_positions) and not consumer_groups:
        raise click.UsageError("--as-of and --apply go with --consumer-groups")
    # Bad input fails before anything is written.
    groups = positions.parse_groups(consumer_groups) if consumer_groups else None
    as_of_time = restore_time(as_of, "--as-of") if as_of else None
    selection = Selection.of(
        partitions=partitions,
        offsets=_parse_offsets(offsets),
        since=since,
        until=until,
        record_keys=keys,
        raw_keys=_hex_keys(key_hexes),
        arbeidssoeker_ids=person_ids,
        include_quarantined=include_quarantined,
    )
    if resume_run is not None and consumer_groups and _completed(resume_run):
        # Nothing left to restore: only the positions (their plan, or its commit).
        _positions(
            load_settings(), resume_run, groups, as_of_time, consumer_groups, apply_positions
        )
        return
    with TerminalProgress("restore") as bar:
        settings = load_settings()
        maybe_migrate(settings, no_migrate)
        report: RestoreReport
        if resume_run is not None:
            report = resume(
                settings,
                resume_run,
                progress=bar,
                max_records=max_records,
                allow_retention_loss=allow_retention_loss,
                accept_new_timestamps=accept_new_timestamps,
            )
        else:
            request = RestoreRequest(
                table=table,
                source_topic=source_topic,
                version=version,
                target_topic=target,
                selection=selection,
                origin_headers=not no_origin_headers,
                force=force,
                keep_source_retention=keep_source_retention,
                allow_retention_loss=allow_retention_loss,
                accept_new_timestamps=accept_new_timestamps,
            )
            report = restore(settings, request, progress=bar, max_records=max_records)
    click.echo(report.summary())
    echo_versions(settings, report.source_table)
    if report.status != "completed":
        click.echo(f"resume with: backup-pipeline restore --resume {report.run_id}")
        if consumer_groups:
            click.echo("consumer-group positions not planned: the restore is not complete")
        return
    if consumer_groups:
        _positions(settings, report.run_id, groups, as_of_time, consumer_groups, apply_positions)


def _completed(run_id: int) -> bool:
    with closing(db.connect(load_settings(), autocommit=True)) as conn:
        run = bookkeeping.load_run(conn, run_id)
    return run is not None and run.status == "completed"


def _positions(
    settings: Settings,
    run_id: int,
    groups: list[str] | None,
    as_of: datetime | None,
    asked: str,
    apply: bool,
) -> None:
    planned = positions.plan(settings, run_id, groups, as_of)
    click.echo(planned.text())
    if not apply:
        again = f"backup-pipeline restore --resume {run_id} --consumer-groups {asked}"
        if as_of is not None:
            again += f" --as-of {as_of.isoformat()}"
        click.echo(f"dry run: nothing committed; to commit: {again} --apply")
        return
    started = time.monotonic()
    count = positions.apply(settings, planned)
    click.echo(
        f"committed {count} partition positions of {len(planned.groups)} groups on "
        f"{planned.target_topic} in {time.monotonic() - started:.2f}s"
    )


@click.command("verify")
@click.option("--table", type=click.Choice(TABLES), help="Backed-up table to verify.")
@click.option("--topic", "source_topic", help="Or: the source topic whose backup to verify.")
@click.option("--against", "against", default=None, help="Topic to compare (default: source).")
@click.option(
    "--version", type=int, default=None, help="Backup version (default: the serving one)."
)
@click.option("--partition", "partitions", type=int, multiple=True, help="Only these.")
@click.option("--sample", type=int, default=0, help="Check N random offsets per partition.")
@click.option("--seed", type=int, default=None, help="Random seed for --sample.")
@click.option(
    "--consumer-groups",
    default=None,
    help="all|G1,G2: also check each group's committed position on --against against its "
    "translated snapshot (the last completed restore run into that topic).",
)
@click.option("--as-of", default=None, help="The snapshot time positions were applied as of.")
@friendly_errors
def verify_command(
    table: str | None,
    source_topic: str | None,
    against: str | None,
    version: int | None,
    partitions: tuple[int, ...],
    sample: int,
    seed: int | None,
    consumer_groups: str | None,
    as_of: str | None,
) -> None:
    """Compare the backup with a topic (the live one or a restored one), per offset."""
    if not (table or source_topic):
        raise click.UsageError("give --table or --topic")
    settings = load_settings()
    with TerminalProgress("verify") as bar:
        report = verify(
            settings,
            table,
            source_topic=source_topic,
            topic=against,
            version=version,
            partitions=partitions or None,
            sample=sample,
            seed=seed,
            progress=bar,
        )
    click.echo(report.summary())
    echo_versions(settings, report.table)
    groups_ok = True
    if consumer_groups:
        groups_ok = _check_positions(settings, report.topic, consumer_groups, as_of)
    if not (report.ok and groups_ok):
        sys.exit(1)


def _check_positions(settings: Settings, topic: str, asked: str, as_of: str | None) -> bool:
    run_id = positions.latest_run_into(settings, topic)
    planned = positions.plan(
        settings,
        run_id,
        positions.parse_groups(asked),
        restore_time(as_of, "--as-of") if as_of else None,
    )
    checks = positions.check(settings, planned)
    for c in checks:
        click.echo(f"group {c.group} on {topic}: {'OK' if c.ok else 'DIFFERS'}: {c.detail}")
    return all(c.ok for c in checks)
