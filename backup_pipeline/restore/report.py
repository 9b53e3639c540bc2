"""What a restore run did: records restored per partition, and how exactly."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RestoreReport:
    run_id: int
    source_table: str
    source_topic: str
    target_topic: str
    version: int
    created_topic: bool = False
    by_partition: dict[int, int] = field(default_factory=dict)
    not_exact: int = 0
    quarantined: int = 0
    # Records found already in the target when resuming: entered in the map, not produced.
    skipped: int = 0
    status: str = "running"
    duration_seconds: float = 0.0
    # The target's configuration as this run found or created it (empty on resume).
    target_config: str = ""

    @property
    def restored(self) -> int:
        return sum(self.by_partition.values())

    def summary(self) -> str:
        parts = ", ".join(f"p{p}: {n}" for p, n in sorted(self.by_partition.items()))
        line = (
            f"restore run {self.run_id} ({self.status}): {self.source_table} v{self.version} "
            f"({self.source_topic}) -> {self.target_topic}: {self.restored} records restored "
            f"[{parts or 'none'}], {self.not_exact} not restored exactly (rows older than "
            f"the headers/timestamp columns), {self.quarantined} from quarantine, "
            f"{self.skipped} already in the target (resume), {self.duration_seconds:.2f}s"
        )
        if self.target_config:
            line += f"\n  target {self.target_topic}: {self.target_config}"
        return line
