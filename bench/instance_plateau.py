"""Dagster's instance database stops growing once storage maintenance runs (issue 17, point 3).

A time-compressed run: runless asset events shaped like the sensors' (per table and tick:
one observation of the topic, one of the table, four check evaluations with today's
metadata) are reported at a steady rate into two Dagster instances on PostgreSQL:

- **pruned**: ``dagster_storage.prune_asset_events`` every ``--purge-every`` seconds with a
  retention of ``--retention-minutes`` (what the daily job does with 14 days);
- **baseline**: the same events, never pruned (Dagster as it is).

Every ``--sample-every`` seconds it prints both instances' rows and bytes per table; at the
end, the bytes a row costs (marginal: growth of the baseline's ``pg_total_relation_size``
over its growth in rows, so the tables' fixed overhead does not count) and, from those, the
instance database's size after a year of operation at given daily rates.

    eval "$(dev/services up)"
    .venv/bin/python bench/instance_plateau.py --minutes 10 --retention-minutes 3

Needs a PostgreSQL role that may CREATE DATABASE (DATABASE_URL's server; the dev server's
``backup`` superuser). Databases ``bench_plateau_*`` are dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import psycopg
from plateau_report import TABLES, Sample, marginal_bytes_per_row, row_line, sample, year_size

from backup_pipeline import dagster_storage
from backup_pipeline.definitions import defs
from backup_pipeline.topics import TOPICS

CHECKS = ("lag_ok", "quarantine_empty", "no_gaps", "runs_succeed")


# Sensors of the code location and their tick; ticks a day that start a run.
SENSORS = len(list(defs.sensors or []))
SENSOR_INTERVAL_SECONDS = 30
SUCCESS_TICKS = 2_300


def log(message: str) -> None:
    print(f"instance_plateau: {message}", file=sys.stderr, flush=True)


def with_dbname(url: str, dbname: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path=f"/{dbname}"))


@contextmanager
def scratch_instance(admin_url: str, name: str) -> Iterator[tuple[dg.DagsterInstance, str]]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_dbname(admin_url, name)
    try:
        overrides = {"storage": {"postgres": {"postgres_url": url}}}
        with dg.instance_for_test(overrides=overrides) as instance:
            yield instance, url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tick_events(
    table: str, topic: str, n: int
) -> list[dg.AssetObservation | dg.AssetCheckEvaluation]:
    """One sensor tick's events for ``table``, with the metadata the sensors write today."""
    key = dg.AssetKey(table)
    lag = (n * 37) % 500
    where = f"SELECT * FROM backup_quarantine WHERE kafka_topic = '{topic}' AND version = 1"
    meta: dict[str, dict[str, Any]] = {
        "lag_ok": {
            "lag": lag,
            "serving_version": dg.MetadataValue.text("v1"),
            "rule": dg.MetadataValue.text("fails when the lag stays above 1000 for 300 s"),
        },
        "quarantine_empty": {
            "unacknowledged": 3,
            "where_to_look": dg.MetadataValue.text(where + " AND acknowledged_at IS NULL"),
            "how_to_acknowledge": dg.MetadataValue.text(
                f"backup-pipeline acknowledge --table {table} --quarantine --by NAME --note TEXT"
            ),
        },
        "no_gaps": {
            "unacknowledged_lost_offsets": 0,
            "where_to_look": dg.MetadataValue.text(
                f"SELECT * FROM backup_gaps WHERE kafka_topic = '{topic}' AND version = 1 "
                "AND kind = 'retention' AND acknowledged_at IS NULL"
            ),
            "how_to_acknowledge": dg.MetadataValue.text(
                f"backup-pipeline acknowledge --table {table} --gaps --by NAME --note TEXT"
            ),
        },
        "runs_succeed": {"job": f"{table}_backup_job"},
    }
    end_offsets = {str(p): 100_000 + n * 20 + p for p in range(3)}
    events: list[dg.AssetObservation | dg.AssetCheckEvaluation] = [
        dg.AssetObservation(
            asset_key=dg.AssetKey(["kafka", table]),
            metadata={
                "end_offset_total": sum(end_offsets.values()),
                "end_offsets": dg.MetadataValue.json(end_offsets),
            },
        ),
        dg.AssetObservation(
            asset_key=key,
            metadata={
                "lag": lag,
                "serving_version": dg.MetadataValue.text("v1"),
                "versions": dg.MetadataValue.text("v1 serving"),
            },
        ),
    ]
    severity = {"quarantine_empty": dg.AssetCheckSeverity.WARN}
    for check in CHECKS:
        events.append(
            dg.AssetCheckEvaluation(
                asset_key=key,
                check_name=check,
                passed=check != "quarantine_empty",
                severity=severity.get(check, dg.AssetCheckSeverity.ERROR),
                metadata=meta[check],
            )
        )
    return events


def all_tick_events() -> Iterator[dg.AssetObservation | dg.AssetCheckEvaluation]:
    n = 0
    while True:
        for spec in TOPICS:
            yield from tick_events(spec.table, spec.default_topic, n)
        n += 1


def measure_tick_bytes(instance: dg.DagsterInstance, url: str, ticks: int) -> float | None:
    """Bytes a sensor tick costs in ``job_ticks`` (marginal), from ``ticks`` ticks shaped
    like a backup sensor's: its cursor, a skip reason or a run id, a log key."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickData, TickStatus

    with closing(dagster_storage.connect(url)) as conn:
        before = dagster_storage.table_sizes(conn)["job_ticks"]
    cursor = json.dumps(
        {"serving": 1, "reingest_version": None, "reingest_start_done": 0, "reingest_start_at": 0.0}
    )
    for n in range(ticks):
        started = n % 20 == 0
        instance.create_tick(
            TickData(
                instigator_origin_id=uuid.uuid4().hex + uuid.uuid4().hex[:8],
                instigator_name="bekreftelser_backup_sensor",
                instigator_type=InstigatorType.SENSOR,
                status=TickStatus.SUCCESS if started else TickStatus.SKIPPED,
                timestamp=time.time(),
                run_ids=[str(uuid.uuid4())] if started else [],
                skip_reason=None if started else "bekreftelser v1: a follow run is active",
                cursor=cursor,
                selector_id=uuid.uuid4().hex + uuid.uuid4().hex[:8],
                log_key=["sensor", uuid.uuid4().hex, str(n)],
                end_timestamp=time.time(),
            )
        )
    with closing(dagster_storage.connect(url)) as conn:
        after = dagster_storage.table_sizes(conn)["job_ticks"]
    rows = after.rows - before.rows
    return (after.bytes - before.bytes) / rows if rows else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--retention-minutes", type=float, default=3)
    parser.add_argument("--purge-every", type=float, default=60, help="seconds")
    parser.add_argument("--sample-every", type=float, default=30, help="seconds")
    parser.add_argument("--rate", type=float, default=3, help="events per second")
    parser.add_argument(
        "--ticks", type=int, default=2000, help="sensor ticks created to size job_ticks"
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    # A kill ends the run through the `finally`s that drop the scratch databases.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    admin_url = os.environ.get("DATABASE_URL")
    if not admin_url:
        log('DATABASE_URL is not set: eval "$(dev/services up)" first')
        return 2
    run_id = uuid.uuid4().hex[:8]
    load = os.getloadavg()[0]
    log(f"load average {load:.1f} on {os.cpu_count()} cores at the start")
    retention = timedelta(minutes=args.retention_minutes)
    with (
        scratch_instance(admin_url, f"bench_plateau_{run_id}_pruned") as (pruned, pruned_url),
        scratch_instance(admin_url, f"bench_plateau_{run_id}_base") as (base, base_url),
        closing(dagster_storage.connect(pruned_url)) as conn,
    ):
        events = all_tick_events()
        start = time.monotonic()
        next_purge = start + args.purge_every
        next_sample = start
        emitted = 0
        samples: list[tuple[Sample, Sample]] = []
        deleted = dagster_storage.PruneCounts()
        print("elapsed    emitted   instance " + "  ".join(f"{t:<27}" for t in TABLES))
        while (now := time.monotonic()) - start < args.minutes * 60:
            if now >= next_sample:
                pair = (
                    sample(pruned_url, now - start, emitted),
                    sample(base_url, now - start, emitted),
                )
                samples.append(pair)
                print(row_line("pruned", pair[0]))
                print(row_line("baseline", pair[1]), flush=True)
                next_sample += args.sample_every
            if now >= next_purge:
                cutoff = (datetime.now(UTC) - retention).replace(tzinfo=None)
                counts = dagster_storage.prune_asset_events(conn, cutoff)
                assert counts is not None
                deleted = dagster_storage.PruneCounts(
                    **{k: v + getattr(counts, k) for k, v in deleted.as_dict().items()}
                )
                log(f"pruned in {time.monotonic() - now:.2f} s: {counts.as_dict()}")
                next_purge += args.purge_every
            event = next(events)
            pruned.report_runless_asset_event(event)
            base.report_runless_asset_event(event)
            emitted += 1
            behind = start + emitted / args.rate - time.monotonic()
            if behind > 0:
                time.sleep(behind)
        final = (
            sample(pruned_url, time.monotonic() - start, emitted),
            sample(base_url, time.monotonic() - start, emitted),
        )
        samples.append(final)
        print(row_line("pruned", final[0]))
        print(row_line("baseline", final[1]))
        tick_bytes = measure_tick_bytes(base, base_url, args.ticks) if args.ticks else None

    elapsed = final[1].elapsed
    achieved = emitted / elapsed
    warm = args.retention_minutes * 60 + args.purge_every
    settled = [p for p in samples if p[0].elapsed >= warm]
    print()
    print(
        f"{emitted:,} events in {elapsed / 60:.1f} min ({achieved:.2f}/s, target {args.rate}/s); "
        f"retention {args.retention_minutes} min, pruned every {args.purge_every:.0f} s; "
        f"load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
        f"on {os.cpu_count()} cores (busy machine: shared with other jobs)"
    )
    print(f"deleted over the run: {deleted.as_dict()}")
    figures: dict[str, Any] = {"events": emitted, "rate": achieved, "tables": {}}
    if len(settled) >= 2:
        print(f"after warm-up ({warm / 60:.1f} min: retention + one purge interval):")
        for table in TABLES:
            pruned_rows = [p[0].sizes[table].rows for p in settled]
            base_growth = settled[-1][1].sizes[table].rows - settled[0][1].sizes[table].rows
            pruned_growth = settled[-1][0].sizes[table].rows - settled[0][0].sizes[table].rows
            ratio = final[0].sizes[table].rows / max(final[1].sizes[table].rows, 1)
            print(
                f"  {table:<24} pruned rows {min(pruned_rows):,}..{max(pruned_rows):,} "
                f"(net {pruned_growth:+,}) while the baseline grew {base_growth:+,}; "
                f"pruned/baseline at the end {ratio:.2f}"
            )
            figures["tables"][table] = {
                "pruned_min": min(pruned_rows),
                "pruned_max": max(pruned_rows),
                "pruned_growth": pruned_growth,
                "baseline_growth": base_growth,
            }
    per_row: dict[str, float] = {}
    first_base = samples[1][1] if len(samples) > 2 else samples[0][1]
    for table in TABLES:
        value = marginal_bytes_per_row(first_base, final[1], table)
        if value is not None:
            per_row[table] = value
            print(f"  {table:<24} {value:,.0f} bytes per row (baseline, with indexes and TOAST)")
    if tick_bytes is not None:
        per_row["job_ticks"] = tick_bytes
        print(f"  {'job_ticks':<24} {tick_bytes:,.0f} bytes per sensor tick ({args.ticks:,} made)")
    figures["bytes_per_row"] = per_row
    if {"event_logs", "asset_check_executions"} <= per_row.keys():
        print(
            "instance database after a year (event_logs + asset_check_executions; runs kept "
            "14 days, asset events 14 days):"
        )
        lines = year_size(per_row, run_retention_days=14, retention_days=14)
        for line in lines:
            print(line)
        if "job_ticks" in per_row:
            # dagster.yaml's tick retention: skipped ticks 1 day, successful ones (a tick that
            # started a run: a follow run every 10 min per topic, a few more) 7 days.
            ticks = SENSORS * 86_400 / SENSOR_INTERVAL_SECONDS
            kept = (ticks - SUCCESS_TICKS) * 1 + SUCCESS_TICKS * 7
            line = (
                f"  {f'{SENSORS} sensors ticks (job_ticks), any scenario':<40} {ticks:,.0f} a day, "
                f"{kept / 1e6:.3f} M rows kept: {kept * per_row['job_ticks'] / 1e9:6.2f} GB"
            )
            print(line)
            lines.append(line)
        figures["year"] = lines
    if args.json:
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
