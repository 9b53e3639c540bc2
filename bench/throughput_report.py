"""What bench/backup_throughput.py measured, and how it reads: the figures of one pass and of
one table, the targets they are judged against, the printed report and profiles."""

from __future__ import annotations

import argparse
import pstats
import statistics
from dataclasses import dataclass, field
from pathlib import Path

TARGET_COPY_RATIO = 0.75  # backup records/s >= 0.75 x raw COPY records/s


TARGET_PER_RECORD_RATIO = 20.0  # backup records/s >= 20 x per-record transactions


TARGET_PEAK_RSS_MB = 300.0


TARGET_MEMORY_RATIO = 1.5  # peak RSS(N) / peak RSS(50k records): flat memory means ~1


MEMORY_REFERENCE_RECORDS = 50_000  # the "5 million uses about what 50 thousand does"


MB = 1_000_000


# ------------------------------------------------------------------ results ----


@dataclass
class PassResult:
    records: int
    rows: int
    quarantined: int
    lag_after: int
    payload_bytes: int
    seconds: float
    rss_start_mb: float
    peak_rss_mb: float
    batches: int

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.payload_bytes / MB / self.seconds


@dataclass
class TableResult:
    table: str
    records: int
    payload_bytes: int = 0
    passes: list[PassResult] = field(default_factory=list)
    copy_seconds: list[float] = field(default_factory=list)
    per_record_sample: int = 0
    per_record_seconds: float = 0.0
    small_pass: PassResult | None = None  # over 50k records: the target's reference
    medium_pass: PassResult | None = None  # over N/10 records: shows where RSS levels off

    @property
    def pass_rate(self) -> float:
        return statistics.median(p.rate for p in self.passes)

    @property
    def pass_mb_per_s(self) -> float:
        return statistics.median(p.mb_per_s for p in self.passes)

    @property
    def peak_rss_mb(self) -> float:
        return max(p.peak_rss_mb for p in self.passes)

    @property
    def copy_rate(self) -> float:
        return self.records / statistics.median(self.copy_seconds)

    @property
    def copy_mb_per_s(self) -> float:
        return self.payload_bytes / MB / statistics.median(self.copy_seconds)

    @property
    def per_record_rate(self) -> float:
        return self.per_record_sample / self.per_record_seconds

    @property
    def memory_ratio(self) -> float | None:
        if self.small_pass is None:
            return None
        return self.peak_rss_mb / self.small_pass.peak_rss_mb


# ------------------------------------------------------------------ report ----


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_report(args: argparse.Namespace, results: list[TableResult]) -> bool:
    from backup_pipeline.settings import Settings

    default = Settings.model_fields["backup_batch_size"].default
    batch = args.batch_size or f"default (BACKUP_BATCH_SIZE unset: {default})"
    print()
    print(
        f"backup throughput: {args.records:,} records per table, 3 partitions, "
        f"batch size {batch}, median of {args.repeat}"
    )
    header = (
        f"{'table':<26}{'records':>10}{'pass s':>8}{'pass rec/s':>12}{'pass MB/s':>10}"
        f"{'COPY rec/s':>12}{'COPY MB/s':>10}{'per-rec/s':>11}{'peak RSS MB':>12}"
        f"{'/COPY':>7}{'/per-rec':>10}"
    )
    print(header)
    print("-" * len(header))
    all_ok = True
    for r in results:
        copy_ratio = r.pass_rate / r.copy_rate
        per_record_ratio = r.pass_rate / r.per_record_rate
        print(
            f"{r.table:<26}{r.records:>10,}{statistics.median(p.seconds for p in r.passes):>8.1f}"
            f"{r.pass_rate:>12,.0f}{r.pass_mb_per_s:>10.2f}{r.copy_rate:>12,.0f}"
            f"{r.copy_mb_per_s:>10.2f}{r.per_record_rate:>11,.0f}{r.peak_rss_mb:>12.0f}"
            f"{copy_ratio:>7.2f}{per_record_ratio:>9.0f}x"
        )
    print()
    print("targets")
    for r in results:
        copy_ratio = r.pass_rate / r.copy_rate
        per_record_ratio = r.pass_rate / r.per_record_rate
        checks = [
            (
                f"backup/COPY {copy_ratio:.2f} >= {TARGET_COPY_RATIO}",
                copy_ratio >= TARGET_COPY_RATIO,
            ),
            (
                f"backup/per-record {per_record_ratio:.0f}x >= {TARGET_PER_RECORD_RATIO:.0f}x",
                per_record_ratio >= TARGET_PER_RECORD_RATIO,
            ),
            (
                f"peak RSS {r.peak_rss_mb:.0f} MB < {TARGET_PEAK_RSS_MB:.0f} MB",
                r.peak_rss_mb < TARGET_PEAK_RSS_MB,
            ),
        ]
        ratio = r.memory_ratio
        if ratio is not None and r.small_pass is not None:
            checks.append(
                (
                    f"peak RSS N vs 50k {r.peak_rss_mb:.0f}/{r.small_pass.peak_rss_mb:.0f} MB "
                    f"= {ratio:.2f} <= {TARGET_MEMORY_RATIO}",
                    ratio <= TARGET_MEMORY_RATIO,
                )
            )
        if r.medium_pass is not None and r.small_pass is not None:
            print(
                f"  {r.table:<26}peak RSS by records: 50k {r.small_pass.peak_rss_mb:.0f} MB, "
                f"N/10 {r.medium_pass.peak_rss_mb:.0f} MB, N {r.peak_rss_mb:.0f} MB "
                f"(N vs N/10 = {r.peak_rss_mb / r.medium_pass.peak_rss_mb:.2f}; info)"
            )
        for text, ok in checks:
            all_ok &= ok
            print(f"  {r.table:<26}{text:<52}{verdict(ok)}")
    print()
    for r in results:
        for i, p in enumerate(r.passes, 1):
            print(
                f"  {r.table} pass {i}: {p.seconds:.2f}s, {p.batches} batches, "
                f"RSS at start {p.rss_start_mb:.0f} MB, peak {p.peak_rss_mb:.0f} MB; "
                f"COPY {r.copy_seconds[i - 1]:.2f}s"
            )
        print(
            f"  {r.table} per record: {r.per_record_sample:,} records in "
            f"{r.per_record_seconds:.2f}s"
        )
    if args.profile:
        print("\nNOTE: passes ran under cProfile; their figures include the profiler's cost.")
    return all_ok


def print_profiles(directory: str) -> None:
    for path in sorted(Path(directory).glob("*.prof")):
        print(f"\n=== {path.name}: top functions by own time ===")
        pstats.Stats(str(path)).sort_stats("tottime").print_stats(20)
        print(f"=== {path.name}: top by cumulative time ===")
        pstats.Stats(str(path)).sort_stats("cumulative").print_stats(25)
