"""What bench/freshness.py observes and prints: the measurement window, when Kafka acknowledged
each record and when its row showed, the runs started, the machine's load, and the report
(p50/p95/max per topic). Imported by freshness.py (bench/ is on sys.path as it runs)."""

from __future__ import annotations

import os
import statistics
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime


@dataclass
class Window:
    """The measurement window, in time.time() seconds; records outside it are not judged."""

    start: float = float("inf")
    end: float = float("inf")

    def contains(self, moment: float) -> bool:
        return self.start <= moment < self.end


@dataclass
class Observations:
    lock: threading.Lock = field(default_factory=threading.Lock)
    # (table, partition, offset) -> when Kafka acknowledged it / when its row was first seen
    acked: dict[tuple[str, int, int], float] = field(default_factory=dict)
    seen: dict[tuple[str, int, int], float] = field(default_factory=dict)
    produce_errors: int = 0

    def pending(self) -> int:
        with self.lock:
            return sum(1 for key in self.acked if key not in self.seen)


@dataclass
class RunCounts:
    started: int = 0  # created inside the window
    active: int = 0  # in progress at some moment of the window, wherever they started


def run_counts(tables: list[str], window: Window) -> dict[str, RunCounts]:
    """Runs per table: a run belongs to a table whose name appears in its job name, asset
    selection or tag values (no assumption about the run model)."""
    from dagster import DagsterInstance, RunsFilter

    counts: dict[str, RunCounts] = defaultdict(RunCounts)
    with DagsterInstance.get() as instance:
        records = instance.get_run_records(
            filters=RunsFilter(created_before=datetime.fromtimestamp(window.end, UTC))
        )
        for record in records:
            if record.end_time is not None and record.end_time < window.start:
                continue
            run = record.dagster_run
            names = [run.job_name, *run.tags.values()]
            names += ["/".join(key.path) for key in run.asset_selection or ()]
            owners = [t for t in tables if any(t in name for name in names)]
            for table in owners or ["(other)"]:
                counts[table].active += 1
                if record.create_timestamp.timestamp() >= window.start:
                    counts[table].started += 1
    return counts


@dataclass
class LoadSampler:
    samples: list[float] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(10):
            self.samples.append(os.getloadavg()[0])


def percentile(values: list[float], share: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def report(
    tables: list[str],
    obs: Observations,
    window: Window,
    runs: dict[str, RunCounts],
    load_before: float,
    load: LoadSampler,
) -> str:
    minutes = (window.end - window.start) / 60
    lines = [
        f"freshness (Kafka ack -> row visible), {minutes:.1f} min window, "
        f"started {datetime.fromtimestamp(window.start, UTC):%Y-%m-%d %H:%M:%S} UTC",
        f"{'table':<26} {'records':>8} {'missing':>8} {'p50 s':>7} {'p95 s':>7} {'max s':>7}"
        f" {'runs':>5} {'active':>6} {'runs/day':>9}",
    ]
    for table in tables:
        delays = sorted(
            obs.seen[key] - acked
            for key, acked in obs.acked.items()
            if key[0] == table and key in obs.seen
        )
        total = sum(1 for key in obs.acked if key[0] == table)
        counted = runs.get(table, RunCounts())
        # No run started in the window: all that is known is fewer than one per window.
        per_day = (
            f"{counted.started / minutes * 1440:>9.0f}"
            if counted.started
            else f"{'<' + format(1440 / minutes, '.0f'):>9}"
        )
        figures = (
            f"{percentile(delays, 0.5):>7.1f} {percentile(delays, 0.95):>7.1f} {delays[-1]:>7.1f}"
            if delays
            else f"{'-':>7} {'-':>7} {'-':>7}"
        )
        lines.append(
            f"{table:<26} {total:>8} {total - len(delays):>8} {figures}"
            f" {counted.started:>5} {counted.active:>6} {per_day}"
        )
    if "(other)" in runs:
        lines.append(f"other runs active in the window: {runs['(other)'].active}")
    lines.append(
        "runs: started in the window; active: in progress at some moment of it; "
        "runs/day: started, extrapolated"
    )
    if obs.produce_errors:
        lines.append(f"produce errors: {obs.produce_errors}")
    cores = os.cpu_count() or 1
    during = load.samples or [os.getloadavg()[0]]
    mean = statistics.fmean(during)
    # The stack and this script load the machine themselves; "busy" means more runnable
    # work than cores before we started, or on average while measuring.
    busy = load_before > cores * 0.5 or mean > cores
    lines.append(
        f"load average (1 min) on {cores} cores: {load_before:.2f} before the stack started, "
        f"{mean:.2f} mean / {max(during):.2f} max while measuring -> machine "
        f"{'BUSY' if busy else 'quiet'}"
    )
    return "\n".join(lines)
