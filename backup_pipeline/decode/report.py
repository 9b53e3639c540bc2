"""What one decode pass did, counted as its batches commit (``DecodeReport``)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DecodeReport:
    table: str
    decoded: int = 0
    undecodable: int = 0  # newly listed in this pass
    redecoded: int = 0  # listed earlier, decoded now
    raw_rows: int = 0
    batches: int = 0
    schema_ids: set[int] = field(default_factory=set)
    by_kind: dict[str, int] = field(default_factory=dict)
