"""How a backup pass reads and writes, built from Settings once and handed down."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backup_pipeline.settings import Settings


def _default(name: str) -> Any:
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class PassOptions:
    """How a pass reads and writes. ``from_settings`` is the way in; the defaults are
    Settings' own (a pass built without settings behaves as one with default settings)."""

    batch_size: int = _default("backup_batch_size")
    batch_bytes: int = _default("backup_batch_bytes")
    # 0 = no cap: read up to the end offsets captured when the pass starts.
    max_records: int = _default("backup_max_records_per_pass")
    kafka_timeout: float = _default("kafka_timeout_seconds")
    # Seconds (0 = none) a statement waits for a lock someone else holds on a table.
    lock_timeout: float = _default("backup_lock_timeout_seconds")
    no_progress_seconds: float = _default("kafka_no_progress_seconds")
    # Between the passes of a follow run, once caught up.
    poll_seconds: float = _default("backup_follow_poll_seconds")
    # How long to wait for another pass's writer lock (0 = skip at once).
    lock_wait_seconds: float = 0.0

    @classmethod
    def from_settings(
        cls, settings: Settings, *, max_records: int | None = None, lock_wait_seconds: float = 0.0
    ) -> PassOptions:
        """``max_records`` defaults to BACKUP_MAX_RECORDS_PER_PASS (a follow run passes
        BACKUP_FOLLOW_PASS_RECORDS)."""
        return cls(
            batch_size=settings.backup_batch_size,
            batch_bytes=settings.backup_batch_bytes,
            max_records=(
                settings.backup_max_records_per_pass if max_records is None else max_records
            ),
            kafka_timeout=settings.kafka_timeout_seconds,
            lock_timeout=settings.backup_lock_timeout_seconds,
            no_progress_seconds=settings.kafka_no_progress_seconds,
            poll_seconds=settings.backup_follow_poll_seconds,
            lock_wait_seconds=lock_wait_seconds,
        )
