"""What bench/instance_plateau.py samples and how it reads: both instances' table sizes over
time, the marginal bytes of a row, and the instance database's size after a year at the
daily rates of a few scenarios."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass

from backup_pipeline import dagster_storage

# The event rows per day the year's figures are computed for (issue 17): today's measured
# production-style rate, and the target of the report-on-change work (point 2). "runless":
# rows the maintenance job deletes after the retention; the rest belong to runs and go with
# them after BACKUP_RUN_RETENTION_DAYS. Today's split (issue 17's 206 s sample: 120 runless
# check evaluations to 36 observations) puts 51,500 of the 67,000 runless rows on checks.
# Check executions: one row per runless evaluation, plus one per check and run (a follow
# run every 10 min per topic: 432 runs x 4 checks = ~1,700 a day).
SCENARIOS = {
    "today (no maintenance)": {
        "event_logs": 81_000,
        "runless": 67_000,
        "asset_check_executions": 53_200,
        "runless_check_executions": 51_500,
        "pruned": False,
    },
    "today's rates + maintenance": {
        "event_logs": 81_000,
        "runless": 67_000,
        "asset_check_executions": 53_200,
        "runless_check_executions": 51_500,
        "pruned": True,
    },
    "report-on-change target + maintenance": {
        "event_logs": 15_000,
        "runless": 2_000,
        "asset_check_executions": 3_200,
        "runless_check_executions": 1_500,
        "pruned": True,
    },
    # Measured after report-on-change (bench/event_rows.py, the higher of two windows).
    "measured after report-on-change + maintenance": {
        "event_logs": 8_736,
        "runless": 2_112,
        "asset_check_executions": 1_536,
        "runless_check_executions": 1_536,
        "pruned": True,
    },
}


@dataclass
class Sample:
    elapsed: float
    emitted: int
    sizes: dict[str, dagster_storage.TableSize]


def sample(url: str, elapsed: float, emitted: int) -> Sample:
    with closing(dagster_storage.connect(url)) as conn:
        return Sample(elapsed, emitted, dagster_storage.table_sizes(conn))


TABLES = ("event_logs", "asset_check_executions", "asset_event_tags")


def row_line(label: str, s: Sample) -> str:
    cells = "  ".join(
        f"{s.sizes[t].rows:>7,} rows {s.sizes[t].bytes / 1e6:>6.2f} MB" for t in TABLES
    )
    return f"{s.elapsed / 60:5.1f} min  {s.emitted:>6,} events  {label:<8} {cells}"


def marginal_bytes_per_row(first: Sample, last: Sample, table: str) -> float | None:
    rows = last.sizes[table].rows - first.sizes[table].rows
    grown = last.sizes[table].bytes - first.sizes[table].bytes
    return grown / rows if rows > 0 else None


def year_size(
    per_row: dict[str, float], run_retention_days: float, retention_days: float
) -> list[str]:
    lines = []
    for name, rates in SCENARIOS.items():
        run_rows = rates["event_logs"] - rates["runless"]
        run_checks = rates["asset_check_executions"] - rates["runless_check_executions"]
        if rates["pruned"]:
            # Steady state: what one retention period holds (the newest per asset and check
            # on top is a few dozen rows).
            events = rates["runless"] * retention_days + run_rows * run_retention_days
            checks = (
                rates["runless_check_executions"] * retention_days
                + max(run_checks, 0) * run_retention_days
            )
        else:
            # Runs (and their events) are purged today, their check executions and every
            # runless event are not.
            events = rates["runless"] * 365 + run_rows * run_retention_days
            checks = rates["asset_check_executions"] * 365
        size = events * per_row["event_logs"] + checks * per_row["asset_check_executions"]
        lines.append(
            f"  {name:<40} event_logs {events / 1e6:6.2f} M rows, asset_check_executions "
            f"{checks / 1e6:6.2f} M rows: {size / 1e9:6.2f} GB"
        )
    return lines
