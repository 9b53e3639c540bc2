"""Which backed-up records a restore or verify reads (``Selection``), and the one parser of
the times in it (``restore_time``): the CLI's options and ``restore_job``'s config both
come through here, and a run stores its selection as JSON to resume with exactly it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from backup_pipeline.errors import RestoreError


def restore_time(text: str, option: str = "time") -> datetime:
    """An ISO-8601 time of a restore selection or a positions snapshot; a time without a
    zone is UTC.

    The one parser for the CLI and Dagster: ``kafka_timestamp`` is timestamptz, and
    PostgreSQL reads a naive time in the session's time zone, so a naive time reaching a
    query would select another window on a server that does not run in UTC.
    """
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RestoreError(
            f"{option} {text!r}: expected an ISO-8601 time, e.g. 2026-03-01T08:00:00 (UTC) "
            "or 2026-03-01T09:00:00+01:00"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Selection:
    """Which backed-up records to read; None means no bound. Offset bounds are inclusive;
    of the time bounds ``since`` is inclusive and ``until`` exclusive."""

    partitions: tuple[int, ...] | None = None
    # partition -> (first offset, last offset)
    offsets: dict[int, tuple[int | None, int | None]] = field(default_factory=dict)
    # Record timestamps; rows from before the kafka_timestamp column never match a range.
    since: datetime | None = None
    until: datetime | None = None  # exclusive
    keys: tuple[bytes, ...] | None = None
    arbeidssoeker_ids: tuple[int, ...] | None = None
    include_quarantined: bool = False

    @classmethod
    def of(
        cls,
        *,
        partitions: Iterable[int] | None = None,
        # partition (a number, or its text in Dagster's config) -> [first, last]
        offsets: Mapping[int, Sequence[int | None]]
        | Mapping[str, Sequence[int | None]]
        | None = None,
        since: str | None = None,
        until: str | None = None,
        record_keys: Iterable[int] = (),
        raw_keys: Iterable[bytes] = (),
        arbeidssoeker_ids: Iterable[int] | None = None,
        include_quarantined: bool = False,
    ) -> Selection:
        """A selection as the CLI's options and ``restore_job``'s config give it: times as
        ISO-8601 text (naive = UTC, restore_time), keys as longs (the topics'
        LongSerializer) or raw bytes, empty lists meaning no filter."""
        keys = [k.to_bytes(8, "big", signed=True) for k in record_keys] + list(raw_keys)
        return cls(
            partitions=tuple(partitions) if partitions else None,
            offsets={int(p): (b[0], b[1]) for p, b in (offsets or {}).items()},
            since=restore_time(since, "since") if since else None,
            until=restore_time(until, "until") if until else None,
            keys=tuple(keys) if keys else None,
            arbeidssoeker_ids=tuple(arbeidssoeker_ids) if arbeidssoeker_ids else None,
            include_quarantined=include_quarantined,
        )

    def wants(self, partition: int) -> bool:
        """Naming offset ranges selects those partitions only; ``partitions`` adds whole
        ones. Neither given: every partition."""
        if self.partitions is None and not self.offsets:
            return True
        return partition in self.offsets or partition in (self.partitions or ())

    def bounds(self, partition: int) -> tuple[int | None, int | None]:
        return self.offsets.get(partition, (None, None))

    def describe(self) -> str:
        """The selection as a person would write it (CLI options' words)."""
        parts: list[str] = []
        if self.partitions is not None:
            parts.append("partitions " + ",".join(map(str, self.partitions)))
        for p, (first, last) in sorted(self.offsets.items()):
            parts.append(
                f"offsets {p}:{'' if first is None else first}-{'' if last is None else last}"
            )
        if self.since is not None:
            parts.append(f"since {self.since.isoformat()}")
        if self.until is not None:
            parts.append(f"until {self.until.isoformat()}")
        if self.keys is not None:
            parts.append(f"{len(self.keys)} keys")
        if self.arbeidssoeker_ids is not None:
            parts.append("arbeidssoeker ids " + ",".join(map(str, self.arbeidssoeker_ids)))
        parts.append("quarantined included" if self.include_quarantined else "quarantined left out")
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["offsets"] = {str(p): list(b) for p, b in self.offsets.items()}
        data["since"] = self.since.isoformat() if self.since else None
        data["until"] = self.until.isoformat() if self.until else None
        data["keys"] = [k.hex() for k in self.keys] if self.keys is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Selection:
        def _tuple(value: Any) -> tuple[Any, ...] | None:
            return None if value is None else tuple(value)

        return cls(
            partitions=_tuple(data.get("partitions")),
            offsets={int(p): (b[0], b[1]) for p, b in (data.get("offsets") or {}).items()},
            # As stored: a resumed run selects exactly what it started with (a run stored
            # before restore_time existed may hold a naive time; it stays as it ran).
            since=datetime.fromisoformat(data["since"]) if data.get("since") else None,
            until=datetime.fromisoformat(data["until"]) if data.get("until") else None,
            keys=_tuple(bytes.fromhex(k) for k in data["keys"])
            if data.get("keys") is not None
            else None,
            arbeidssoeker_ids=_tuple(data.get("arbeidssoeker_ids")),
            include_quarantined=bool(data.get("include_quarantined")),
        )


EVERYTHING = Selection(include_quarantined=True)
