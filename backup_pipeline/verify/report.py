"""What a verify found, per partition and in all: the report and its summary."""

from __future__ import annotations

from dataclasses import dataclass, field

from backup_pipeline.errors import BackupError


class VerifyError(BackupError):
    """The comparison itself could not be made."""


@dataclass
class PartitionVerify:
    partition: int
    log_start: int
    end_offset: int
    compared: int = 0
    missing: list[int] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)
    different: list[int] = field(default_factory=list)
    # Topic records that carry no origin and are not in the offset map (restored topics).
    unmapped: list[int] = field(default_factory=list)
    # Backup offsets below the topic's log start: (first, last, records).
    only_in_backup: tuple[int, int, int] | None = None
    # Topic offsets above the backup's HWM: (first, last).
    not_backed_up: tuple[int, int] | None = None
    # The backup offsets that were compared: (first, last).
    compared_range: tuple[int, int] | None = None
    # Restored topics: backed-up records the restore's selection left out, and how many
    # of those are quarantined records.
    excluded: int = 0
    excluded_quarantined: int = 0
    # Restored topics: target offsets the restore runs did not write (first, last).
    outside_restore: list[tuple[int, int]] = field(default_factory=list)
    # Restored topics: records delivered after the run's last checkpoint (a run that was
    # killed and not resumed yet); resuming the run records them.
    unrecorded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.different or self.unmapped)


@dataclass
class VerifyReport:
    table: str
    source_topic: str
    topic: str
    version: int
    restored: bool
    sample: int = 0
    partitions: list[PartitionVerify] = field(default_factory=list)
    # What a restored topic was compared against (restore runs and their selection).
    basis: str = ""

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.partitions)

    @property
    def compared(self) -> int:
        return sum(p.compared for p in self.partitions)

    def findings(self) -> dict[str, list[tuple[int, int]]]:
        """kind -> [(partition, offset)] for every finding listed."""
        kinds = ("missing", "extra", "different", "unmapped")
        return {
            kind: [(p.partition, o) for p in self.partitions for o in getattr(p, kind)]
            for kind in kinds
        }

    def summary(self) -> str:
        mode = f"sample of {self.sample}/partition" if self.sample else "full"
        lines = [
            f"verify {self.table} v{self.version} against {self.topic} ({mode}): "
            f"{self.compared} records compared, "
            + ("no differences" if self.ok else "DIFFERENCES FOUND")
        ]
        if self.basis:
            lines.append(f"  {self.basis}")
        for p in self.partitions:
            lines.append(f"  partition {p.partition}: compared {p.compared}" + _ranges(p))
            for kind in ("missing", "extra", "different", "unmapped"):
                offsets = getattr(p, kind)
                if offsets:
                    shown = ", ".join(map(str, offsets[:20]))
                    more = f" (+{len(offsets) - 20} more)" if len(offsets) > 20 else ""
                    lines.append(f"    {kind} ({len(offsets)}): {shown}{more}")
        return "\n".join(lines)


def _ranges(p: PartitionVerify) -> str:
    text = ""
    if p.compared_range:
        text += f" over offsets {p.compared_range[0]}..{p.compared_range[1]}"
    if p.only_in_backup:
        first, last, n = p.only_in_backup
        text += f"; {n} records at {first}..{last} live only in the backup"
    if p.not_backed_up:
        text += f"; offsets {p.not_backed_up[0]}..{p.not_backed_up[1]} not backed up yet"
    if p.excluded:
        why = (
            f", {p.excluded_quarantined} of them quarantined (left out unless "
            "--include-quarantined)"
            if p.excluded_quarantined
            else ""
        )
        noun = "record" if p.excluded == 1 else "records"
        text += f"; {p.excluded} backed-up {noun} excluded by the restore's selection{why}"
    for first, last in p.outside_restore:
        text += f"; topic offsets {first}..{last} not written by the restore, not compared"
    if p.unrecorded:
        text += f"; {p.unrecorded} records after the run's last checkpoint (resume the run)"
    return text
