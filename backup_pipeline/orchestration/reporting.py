"""When a backup sensor writes an asset event: when something an operator acts on changed,
and at least every BACKUP_HEALTH_HEARTBEAT_SECONDS.

Dagster keeps every asset event forever (runless ones have no retention), so a tick that
reports six events per table whether or not anything changed fills its database by tens of
thousands of rows a day. Dagster's own freshness daemon evaluates every 30 s but writes an
event only when a state changes; the sensor does the same:

- a check is reported when its result or severity flips, when the lag moves into another
  time band (the lag check carries the band), when the table's latest materialization is
  newer than the check's latest result (the asset page shows results for the latest
  materialization only), and at the heartbeat;
- the table's observation (lag, versions, re-ingestion) when the lag's band, the versions
  or the whole re-ingestion percent changed, and at the heartbeat.

What was last reported is read back: for checks from Dagster itself (a follow run reports
them too, so the sensor compares with what the UI shows, whoever wrote it), for the
observation from the sensor's cursor. A restart therefore re-emits nothing.

Everything here is pure: the sensor gathers the facts and writes what this says.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from backup_pipeline.status import PartitionStatus

# Time-behind bands an operator reads at a glance; a band change is worth a row.
_BANDS = ((60.0, "under 1 min"), (300.0, "1-5 min"), (1800.0, "5-30 min"), (7200.0, "30 min-2 h"))


def behind_band(seconds: float) -> str:
    for limit, name in _BANDS:
        if seconds < limit:
            return name
    return "over 2 h"


def behind_text(seconds: float) -> str:
    """``seconds`` as a person says it: "0 s", "42 s", "7 min", "2 h 5 min"."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def behind_seconds(
    marks: dict[str, list[float]], partitions: Sequence[PartitionStatus], now: float
) -> float:
    """How long the oldest record not yet backed up has been waiting, to within a tick.

    ``marks`` (kept in the sensor's cursor, updated here) holds per partition the end offset
    a tick saw while the partition had lag, and when. Once the HWM reaches that offset, all
    records of that moment are stored and the mark goes; while it stays, the records at
    the HWM have waited at least since then. Under steady traffic every tick finds the last
    tick's records stored, so the time behind stays below one tick although the lag in
    records is never 0 — which is what "behind" means to an operator.
    """
    seen = {str(p.partition) for p in partitions}
    for gone in set(marks) - seen:
        del marks[gone]
    behind = 0.0
    for p in partitions:
        key = str(p.partition)
        done = -1 if p.hwm is None else p.hwm
        mark = marks.get(key)
        if mark is not None and done + 1 >= mark[0]:
            del marks[key]
            mark = None
        if mark is None and p.lag > 0:
            marks[key] = mark = [float(p.end_offset), now]
        if mark is not None:
            behind = max(behind, now - mark[1])
    return behind


@dataclass(frozen=True)
class Reported:
    """A check's latest result as Dagster holds it."""

    signature: str
    timestamp: float  # epoch seconds
    for_latest_materialization: bool


def checks_due(
    signatures: Mapping[str, str],
    reported: Mapping[str, Reported | None],
    now: float,
    heartbeat_seconds: float,
) -> list[str]:
    """The checks (by name, in ``signatures``' order) whose result must be written now."""
    due = []
    for name, signature in signatures.items():
        last = reported.get(name)
        if (
            last is None
            or last.signature != signature
            or not last.for_latest_materialization
            or now - last.timestamp >= heartbeat_seconds
        ):
            due.append(name)
    return due


def observation_due(
    signature: str, last_signature: str, last_at: float, now: float, heartbeat_seconds: float
) -> bool:
    return signature != last_signature or now - last_at >= heartbeat_seconds
