"""What a backup pass did, for the CLI, Dagster metadata and logs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PartitionReport:
    partition: int
    hwm_before: int
    log_start: int
    end_offset: int
    hwm_after: int
    rows: int = 0
    quarantined: int = 0
    warnings: int = 0
    no_record: int = 0  # offsets passed that carried no record (markers, compaction)
    lost_first: int | None = None
    lost_last: int | None = None
    lost_kind: str | None = None
    error: str | None = None

    @property
    def lag(self) -> int:
        return max(0, self.end_offset - (self.hwm_after + 1))

    @property
    def lost(self) -> int:
        """Offsets Kafka no longer held when this pass reached them (any kind)."""
        if self.lost_first is None or self.lost_last is None:
            return 0
        return self.lost_last - self.lost_first + 1


@dataclass
class PassReport:
    topic: str
    table: str
    version: int
    partitions: list[PartitionReport] = field(default_factory=list)
    duration_seconds: float = 0.0
    batches: int = 0
    bytes_read: int = 0
    skipped: str | None = None

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions)

    @property
    def quarantined(self) -> int:
        return sum(p.quarantined for p in self.partitions)

    @property
    def warnings(self) -> int:
        return sum(p.warnings for p in self.partitions)

    @property
    def records(self) -> int:
        return self.rows + self.quarantined

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def lost(self) -> int:
        return sum(p.lost for p in self.partitions if p.lost_kind == "retention")

    @property
    def errors(self) -> list[str]:
        return [f"partition {p.partition}: {p.error}" for p in self.partitions if p.error]

    @property
    def records_per_second(self) -> float:
        return self.records / self.duration_seconds if self.duration_seconds > 0 else 0.0

    def summary(self) -> str:
        if self.skipped:
            return f"{self.topic} (v{self.version}): skipped: {self.skipped}"
        text = (
            f"{self.topic} -> {self.table} (v{self.version}): {self.rows} rows, "
            f"{self.quarantined} quarantined, {self.warnings} warnings, "
            f"lag after {self.lag}, {self.duration_seconds:.2f}s "
            f"({self.records_per_second:,.0f} records/s)"
        )
        gaps = [p for p in self.partitions if p.lost_kind]
        for p in gaps:
            text += (
                f"\n  partition {p.partition}: offsets {p.lost_first}..{p.lost_last} "
                f"were no longer in Kafka ({p.lost_kind})"
            )
        for error in self.errors:
            text += f"\n  ERROR {error}"
        return text
