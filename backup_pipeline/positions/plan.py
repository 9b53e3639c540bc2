"""Translate recorded consumer-group positions into a restored topic's offsets; commit them.

A group's committed offset C on a source partition names the next record it had not read.
That record (or, if it was not restored, the next restored one after it) has a target
offset in ``restore_offset_map``: that is the group's new position. A position past the
last restored record maps to the end of what the restore wrote. A run's target offsets are
contiguous per partition (run.py), so the records still to read are end - new offset.

Nothing here changes the cluster except ``apply``; ``plan`` and ``check`` only read.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from backup_pipeline import db, readback
from backup_pipeline.errors import KafkaUnavailableError, RestoreError
from backup_pipeline.kafka.config import admin_config, serve_admin_log
from backup_pipeline.restore import bookkeeping, target_topic
from backup_pipeline.restore.bookkeeping import RunRow
from backup_pipeline.settings import Settings
from backup_pipeline.topics import spec_for_table

ALL = "all"
# Groups Kafka lets an admin commit for: nobody is a member.
IDLE_STATES = frozenset({"empty", "dead"})


def parse_groups(text: str) -> list[str] | None:
    """``all`` -> None (every recorded group); ``G1,G2`` -> those."""
    names = [g.strip() for g in text.split(",") if g.strip()]
    if not names:
        raise RestoreError("--consumer-groups: give `all` or group names separated by commas")
    return None if names == [ALL] else names


@dataclass(frozen=True)
class Move:
    partition: int
    old_offset: int | None  # committed on the source; None: the group never committed here
    new_offset: int | None  # on the target; None: left as it is
    to_read: int  # restored records the group had not read yet
    note: str = ""


@dataclass
class GroupPlan:
    group: str
    state_then: str
    seen_at: datetime
    last_seen_at: datetime
    moves: list[Move] = field(default_factory=list)

    @property
    def commits(self) -> dict[int, int]:
        return {m.partition: m.new_offset for m in self.moves if m.new_offset is not None}


@dataclass
class PositionsPlan:
    run_id: int
    source_topic: str
    target_topic: str
    version: int
    as_of: datetime | None
    groups: list[GroupPlan] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        when = "latest snapshot" if self.as_of is None else f"as of {self.as_of.isoformat()}"
        out = [
            f"consumer-group positions ({when}) of {self.source_topic} v{self.version} "
            f"translated into {self.target_topic} through restore run {self.run_id}:"
        ]
        for g in self.groups:
            out.append(
                f"  group {g.group}: seen {g.last_seen_at.isoformat(timespec='seconds')} "
                f"(state then {g.state_then})"
            )
            for m in g.moves:
                old = "-" if m.old_offset is None else str(m.old_offset)
                new = "left as it is" if m.new_offset is None else str(m.new_offset)
                note = f"  ({m.note})" if m.note else ""
                out.append(
                    f"    p{m.partition}: old offset {old} -> new offset {new}, "
                    f"{m.to_read} still to read{note}"
                )
        if not self.groups:
            out.append("  (no group)")
        return out

    def text(self) -> str:
        return "\n".join(self.lines())


def plan(
    settings: Settings,
    run_id: int,
    groups: list[str] | None = None,
    as_of: datetime | None = None,
    *,
    admin: AdminClient | None = None,
) -> PositionsPlan:
    """The translated positions of ``groups`` (None: every recorded group); reads only."""
    started = time.monotonic()
    admin = admin or AdminClient(admin_config(settings))
    with closing(db.connect(settings, autocommit=True)) as conn:
        run = _completed_run(conn, run_id)
        ends = _restored_ends(conn, run)
        _check_partitions(settings, conn, admin, run)
        result = PositionsPlan(run.run_id, run.source_topic, run.target_topic, run.version, as_of)
        for group in _groups(conn, run, groups, as_of):
            result.groups.append(_group_plan(conn, run, group, as_of, ends))
    result.seconds = time.monotonic() - started
    return result


def _completed_run(conn: psycopg.Connection, run_id: int) -> RunRow:
    run = bookkeeping.load_run(conn, run_id)
    if run is None:
        raise RestoreError(f"there is no restore run {run_id}")
    if run.status != "completed":
        raise RestoreError(
            f"restore run {run_id} is {run.status}, not completed: positions would point into "
            f"a partial restore. Finish it first: backup-pipeline restore --resume {run_id}"
        )
    return run


def _restored_ends(conn: psycopg.Connection, run: RunRow) -> dict[int, tuple[int, int]]:
    """Per partition the run restored into: (first, next) target offset it wrote."""
    rows = conn.execute(
        "SELECT p.kafka_partition, p.first_target_offset, p.next_target_offset, p.restored, "
        "(SELECT count(*) FROM restore_offset_map m WHERE m.run_id = p.run_id "
        " AND m.source_partition = p.kafka_partition) "
        "FROM restore_progress p WHERE p.run_id = %s",
        (run.run_id,),
    ).fetchall()
    restored = sum(r[3] for r in rows)
    mapped = sum(r[4] for r in rows)
    if restored and mapped != restored:
        raise RestoreError(
            f"restore run {run.run_id} restored {restored} records but its offset map holds "
            f"{mapped} (an old run, or the map was deleted): positions cannot be translated "
            "exactly; restore again to get a run with a map"
        )
    return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}


def _check_partitions(
    settings: Settings, conn: psycopg.Connection, admin: AdminClient, run: RunRow
) -> None:
    timeout = settings.kafka_timeout_seconds
    target = target_topic.partition_count(admin, run.target_topic, timeout)
    if target is None:
        raise RestoreError(f"the target topic {run.target_topic} does not exist (any more)")
    spec = spec_for_table(run.source_table)
    row = conn.execute(
        "SELECT max(kafka_partition) FROM consumer_group_positions "
        "WHERE version = %s AND kafka_topic = %s",
        (run.version, run.source_topic),
    ).fetchone()
    seen = -1 if row is None or row[0] is None else int(row[0])
    source = max(readback.known_partitions(conn, spec, run.source_topic, run.version), seen + 1)
    if source != target:
        raise RestoreError(
            f"{run.target_topic} has {target} partitions but {run.source_topic} had {source}: "
            "a group's position belongs to its partition, so positions are only translated "
            "into a target with the same partition count"
        )


def _groups(
    conn: psycopg.Connection, run: RunRow, wanted: list[str] | None, as_of: datetime | None
) -> list[str]:
    rows = conn.execute(
        "SELECT group_id, min(seen_at) FROM consumer_group_positions "
        "WHERE version = %s AND kafka_topic = %s GROUP BY group_id ORDER BY group_id",
        (run.version, run.source_topic),
    ).fetchall()
    first_seen = {str(g): s for g, s in rows}
    where = f"{run.source_topic} v{run.version}"
    if wanted is None:
        return [g for g, s in first_seen.items() if as_of is None or s <= as_of]
    for group in wanted:
        if group not in first_seen:
            known = ", ".join(first_seen) or "none"
            raise RestoreError(
                f"unknown group {group}: no position of it on {where} was recorded "
                f"(recorded groups: {known})"
            )
        if as_of is not None and first_seen[group] > as_of:
            raise RestoreError(
                f"group {group} has no snapshot on {where} before {as_of.isoformat()} "
                f"(first seen {first_seen[group].isoformat(timespec='seconds')})"
            )
    return wanted


def _group_plan(
    conn: psycopg.Connection,
    run: RunRow,
    group: str,
    as_of: datetime | None,
    ends: dict[int, tuple[int, int]],
) -> GroupPlan:
    rows = conn.execute(
        """
        SELECT DISTINCT ON (kafka_partition) kafka_partition, committed_offset, group_state,
               seen_at, last_seen_at
        FROM consumer_group_positions
        WHERE version = %s AND kafka_topic = %s AND group_id = %s
          AND (%s::timestamptz IS NULL OR seen_at <= %s::timestamptz)
        ORDER BY kafka_partition, seen_at DESC
        """,
        (run.version, run.source_topic, group, as_of, as_of),
    ).fetchall()
    positions = {int(r[0]): int(r[1]) for r in rows}
    latest = max(rows, key=lambda r: r[3])
    last_seen = max(r[4] for r in rows)
    if as_of is not None:
        last_seen = min(last_seen, as_of)
    result = GroupPlan(group, latest[2], latest[3], last_seen)
    for partition in sorted(set(ends) | set(positions)):
        old = positions.get(partition)
        if partition not in ends:
            result.moves.append(Move(partition, old, None, 0, f"not restored by run {run.run_id}"))
            continue
        first, end = ends[partition]
        if old is None:
            result.moves.append(
                Move(
                    partition,
                    None,
                    None,
                    end - first,
                    "no committed position: the consumer's auto.offset.reset decides",
                )
            )
            continue
        found = conn.execute(
            "SELECT target_offset FROM restore_offset_map WHERE run_id = %s "
            "AND source_partition = %s AND source_offset >= %s ORDER BY source_offset LIMIT 1",
            (run.run_id, partition, old),
        ).fetchone()
        new = end if found is None else int(found[0])
        note = "past the last restored record: the end" if found is None else ""
        result.moves.append(Move(partition, old, new, end - new, note))
    return result


def _states(admin: AdminClient, groups: list[str], timeout: float) -> dict[str, tuple[str, int]]:
    if not groups:
        return {}
    futures = admin.describe_consumer_groups(groups, request_timeout=timeout)
    out = {}
    for group, future in futures.items():
        try:
            described = future.result()
        except KafkaException as exc:
            serve_admin_log(admin)
            raise KafkaUnavailableError(f"cannot describe consumer group {group}: {exc}") from None
        out[group] = (described.state.name.lower(), len(described.members))
    return out


def apply(settings: Settings, positions: PositionsPlan, *, admin: AdminClient | None = None) -> int:
    """Commit the plan on the target; refuses (commits nothing) while a group is active.

    Returns the number of partition positions committed."""
    admin = admin or AdminClient(admin_config(settings))
    timeout = settings.kafka_timeout_seconds
    states = _states(admin, [g.group for g in positions.groups], timeout)
    for group, (state, members) in states.items():
        if state not in IDLE_STATES:
            raise RestoreError(
                f"refusing to commit positions: group {group} is active ({state}, {members} "
                "members) and Kafka commits only for a group without members; stop its "
                "consumers, wait until it is empty, and apply again (nothing was committed)"
            )
    futures = {
        g.group: admin.alter_consumer_group_offsets(
            [
                ConsumerGroupTopicPartitions(
                    g.group,
                    [TopicPartition(positions.target_topic, p, o) for p, o in g.commits.items()],
                )
            ],
            request_timeout=timeout,
        )[g.group]
        for g in positions.groups
        if g.commits
    }
    committed = 0
    for group, future in futures.items():
        try:
            result = future.result()
        except KafkaException as exc:
            raise RestoreError(f"committing positions of group {group} failed: {exc}") from None
        failed = [tp for tp in result.topic_partitions or [] if tp.error is not None]
        if failed:
            raise RestoreError(
                f"committing positions of group {group} failed on partition "
                f"{failed[0].partition}: {failed[0].error}"
            )
        committed += len(result.topic_partitions or [])
    return committed


@dataclass(frozen=True)
class GroupCheck:
    group: str
    ok: bool
    detail: str


def committed(admin: AdminClient, group: str, topic: str, timeout: float) -> dict[int, int]:
    future = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=timeout
    )[group]
    try:
        result = future.result()
    except KafkaException as exc:
        raise KafkaUnavailableError(f"cannot read the offsets of group {group}: {exc}") from None
    return {
        tp.partition: tp.offset
        for tp in result.topic_partitions or []
        if tp.topic == topic and tp.offset >= 0
    }


def check(
    settings: Settings, positions: PositionsPlan, *, admin: AdminClient | None = None
) -> list[GroupCheck]:
    """Per group: is its committed position on the target the translated one? Ahead of it
    is fine (it has read on since); behind it would read records twice, none skips."""
    admin = admin or AdminClient(admin_config(settings))
    out = []
    for g in positions.groups:
        now = committed(admin, g.group, positions.target_topic, settings.kafka_timeout_seconds)
        problems, notes = [], []
        for p, want in sorted(g.commits.items()):
            have = now.get(p)
            if have is None:
                problems.append(f"p{p} has no committed offset (expected {want})")
            elif have < want:
                problems.append(f"p{p} at {have}, {want - have} behind {want} (would read twice)")
            elif have > want:
                notes.append(f"p{p} {have - want} ahead (read since)")
        if problems:
            out.append(GroupCheck(g.group, False, "; ".join(problems)))
        else:
            detail = "at the translated positions" + (f" ({', '.join(notes)})" if notes else "")
            out.append(GroupCheck(g.group, True, detail))
    return out


def latest_run_into(settings: Settings, target: str) -> int:
    """The last completed restore run into ``target``."""
    with closing(db.connect(settings, autocommit=True)) as conn:
        runs = [r for r in bookkeeping.runs_into(conn, target) if r.status == "completed"]
    if not runs:
        raise RestoreError(f"no completed restore run wrote into {target}")
    return runs[-1].run_id
