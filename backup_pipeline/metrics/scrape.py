"""What one scrape gives the collector: per table, version and partition the backup's
numbers beside the topic's offsets (``PartitionReading``), the failed runs, and which
sources (``SOURCES``) answered. ``readings.Reader`` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from backup_pipeline.status import PartitionStatus

SOURCES = ("postgres", "kafka", "dagster")


@dataclass(frozen=True)
class PartitionReading:
    table: str
    topic: str
    version: int
    state: str  # serving, reingesting, or unrecorded (retired versions are left out)
    partition: int
    hwm: int | None  # None: nothing accounted for yet
    rows_stored: int
    quarantined: int
    gaps: int  # retention gaps recorded
    lost: int  # offsets in them
    last_stored_at: datetime | None  # Kafka timestamp of the newest stored record
    # From Kafka; None when Kafka did not answer in this scrape.
    log_start: int | None = None
    end_offset: int | None = None

    @property
    def lag(self) -> int | None:
        if self.end_offset is None:
            return None
        # status.py's definition, so `backup-pipeline status` and the endpoint agree.
        return PartitionStatus(
            self.table,
            self.topic,
            self.version,
            self.partition,
            self.hwm,
            self.log_start or 0,
            self.end_offset,
            self.quarantined,
            self.lost,
        ).lag

    def lag_seconds(self, now: float) -> float | None:
        """0 when caught up; else how old the newest stored record is (an upper bound of
        the age of the oldest record not stored yet, which is newer than it). None when
        Kafka did not answer, or nothing with a timestamp is stored yet."""
        lag = self.lag
        if lag is None:
            return None
        if lag == 0:
            return 0.0
        if self.last_stored_at is None:
            return None
        return max(0.0, now - self.last_stored_at.timestamp())


@dataclass
class Reading:
    partitions: list[PartitionReading] = field(default_factory=list)
    # (table, version) -> failed runs recorded in Dagster; empty when not configured.
    runs_failed: dict[tuple[str, int], int] = field(default_factory=dict)
    # Per source (postgres, kafka, dagster): whether it answered fully in this scrape.
    up: dict[str, bool] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    duration_seconds: float = 0.0
