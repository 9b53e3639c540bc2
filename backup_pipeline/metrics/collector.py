"""The Prometheus view of a ``Reading``: a custom collector that reads on each scrape, so
every value is exact at the moment Prometheus asks (nothing is cached between scrapes
except the incremental row counts, which are exact by construction; readings.py).

Labels are names from the domain only (table, topic, version, partition, source): never a
URL, a host or anything from a secret.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from backup_pipeline.metrics.readings import Reader
from backup_pipeline.metrics.scrape import SOURCES, Reading

PREFIX = "backup_pipeline"
PARTITION_LABELS = ["table", "topic", "version", "partition"]


class BackupCollector(Collector):
    """Reads at each scrape. No ``describe``: registering it then reads nothing (a registry
    without auto_describe asks only collectors that describe themselves)."""

    def __init__(self, reader: Reader, *, now: Callable[[], float] = time.time) -> None:
        self._reader = reader
        self._now = now
        # prometheus_client serves each request on its own thread; the reader's connections
        # and counts are not shared between two scrapes at once.
        self._lock = threading.Lock()
        self._errors = dict.fromkeys(SOURCES, 0)
        self._scrapes = 0

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with self._lock:
            reading = self._reader.read()
            self._scrapes += 1
            for name in reading.errors:
                self._errors[name] += 1
            errors = dict(self._errors)
            scrapes = self._scrapes
        yield from families(reading, self._now(), errors, scrapes)


def families(
    reading: Reading, now: float, errors: dict[str, int], scrapes: int
) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    def gauge(name: str, doc: str, labels: list[str] = PARTITION_LABELS) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)

    hwm = gauge("hwm_offset", "Offset up to which every offset is accounted for (-1: none yet).")
    end = gauge("end_offset", "Kafka's end offset (last stable offset, read_committed).")
    log_start = gauge("log_start_offset", "First offset Kafka still holds.")
    lag = gauge("lag_records", "Offsets between the HWM and the end offset, not backed up yet.")
    lag_seconds = gauge(
        "lag_seconds",
        "0 when caught up; else now minus the Kafka timestamp of the newest stored record "
        "(an upper bound of the age of the oldest record not stored yet).",
    )
    last_stored = gauge(
        "last_stored_record_timestamp_seconds",
        "Kafka timestamp of the newest stored record (Unix seconds).",
    )
    rows = CounterMetricFamily(
        f"{PREFIX}_rows_stored", "Rows stored in the table.", labels=PARTITION_LABELS
    )
    quarantined = gauge("quarantined_records", "Records kept in backup_quarantine.")
    gaps = gauge("gaps", "Retention gaps recorded (records Kafka deleted before backup).")
    lost = gauge("lost_records", "Offsets in the recorded retention gaps.")
    info = gauge(
        "version_info",
        "1 per version reported, with its state (serving, reingesting, unrecorded).",
        ["table", "topic", "version", "state"],
    )
    for p in reading.partitions:
        labels = [p.table, p.topic, str(p.version), str(p.partition)]
        hwm.add_metric(labels, -1 if p.hwm is None else p.hwm)
        rows.add_metric(labels, p.rows_stored)
        quarantined.add_metric(labels, p.quarantined)
        gaps.add_metric(labels, p.gaps)
        lost.add_metric(labels, p.lost)
        if p.last_stored_at is not None:
            last_stored.add_metric(labels, p.last_stored_at.timestamp())
        if p.end_offset is not None and p.log_start is not None:
            end.add_metric(labels, p.end_offset)
            log_start.add_metric(labels, p.log_start)
        records = p.lag
        if records is not None:
            lag.add_metric(labels, records)
        seconds = p.lag_seconds(now)
        if seconds is not None:
            lag_seconds.add_metric(labels, seconds)
    for table, topic, version, state in sorted(
        {(p.table, p.topic, p.version, p.state) for p in reading.partitions}
    ):
        info.add_metric([table, topic, str(version), state], 1)
    yield from (hwm, end, log_start, lag, lag_seconds, last_stored, rows, quarantined)
    yield from (gaps, lost, info)

    if "dagster" in reading.up:
        runs = gauge(
            "runs_failed",
            "Failed Dagster runs of the table's backup in Dagster's run storage (runs older "
            "than BACKUP_RUN_RETENTION_DAYS are purged, so this can go down).",
            ["table", "version"],
        )
        reported = {(p.table, p.version) for p in reading.partitions}
        for table, version in sorted(reported | set(reading.runs_failed)):
            runs.add_metric([table, str(version)], reading.runs_failed.get((table, version), 0))
        yield runs

    up = gauge("up", "1 when the source answered fully in this scrape.", ["source"])
    for name, answered in sorted(reading.up.items()):
        up.add_metric([name], 1 if answered else 0)
    yield up
    failed = CounterMetricFamily(
        f"{PREFIX}_scrape_errors",
        "Scrapes in which the source failed or ran out of time (see the log for why).",
        labels=["source"],
    )
    for name, count in errors.items():
        failed.add_metric([name], count)
    yield failed
    yield CounterMetricFamily(f"{PREFIX}_scrapes", "Scrapes served by this process.", scrapes)
    yield GaugeMetricFamily(
        f"{PREFIX}_scrape_duration_seconds",
        "Time this scrape spent reading PostgreSQL, Kafka and Dagster.",
        reading.duration_seconds,
    )


def registry(reader: Reader) -> CollectorRegistry:
    """A registry of its own: the backup's metrics and the process's (memory, CPU)."""
    from prometheus_client import ProcessCollector

    result = CollectorRegistry()
    result.register(BackupCollector(reader))
    ProcessCollector(registry=result)
    return result
