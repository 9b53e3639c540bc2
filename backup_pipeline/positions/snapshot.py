"""Record the committed offsets of the consumer groups reading the backed-up topics.

One pass per tick: one ListGroups request, then one OffsetFetch per wanted group, all
sent at once (librdkafka takes one group per OffsetFetch request) and awaited together.
A row is written only where a group's offset or state changed; otherwise the latest row's
``last_seen_at`` moves on. Nothing is written for a version a restore wrote back into
its own topic: committed offsets there are in that restore's numbering, not the backup's.
"""

from __future__ import annotations

import fnmatch
import time
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException
from confluent_kafka.admin import AdminClient

from backup_pipeline import db
from backup_pipeline.errors import KafkaUnavailableError
from backup_pipeline.kafka.config import CONSUMER_GROUP_ID, admin_config, serve_admin_log
from backup_pipeline.settings import Settings
from backup_pipeline.topics import TOPICS


@dataclass(frozen=True)
class GroupFilter:
    """Which groups are recorded: comma-separated fnmatch patterns; never the backup's own."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> GroupFilter:
        def patterns(text: str) -> tuple[str, ...]:
            return tuple(p.strip() for p in text.split(",") if p.strip())

        return cls(
            patterns(settings.backup_consumer_groups_allow),
            patterns(settings.backup_consumer_groups_deny),
        )

    def wants(self, group: str) -> bool:
        if group == CONSUMER_GROUP_ID:
            return False
        if self.allow and not any(fnmatch.fnmatchcase(group, p) for p in self.allow):
            return False
        return not any(fnmatch.fnmatchcase(group, p) for p in self.deny)


@dataclass
class SnapshotReport:
    groups_listed: int = 0
    groups_read: int = 0
    positions: int = 0  # (version, topic, group, partition) seen this tick
    changed: int = 0  # of those, rows written because the offset or state changed
    thinned: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        line = (
            f"{self.positions} positions of {self.groups_read} of {self.groups_listed} groups "
            f"recorded ({self.changed} changed, {self.thinned} thinned) in {self.seconds:.2f}s"
        )
        if self.problems:
            line += f"; {len(self.problems)} problems, first: {self.problems[0]}"
        return line


def group_state(listing_state: object) -> str:
    name = getattr(listing_state, "name", None) or str(listing_state)
    return name.lower()


def take_snapshot(
    settings: Settings, *, admin: AdminClient | None = None, now: datetime | None = None
) -> SnapshotReport:
    """One pass: record the positions of the wanted groups on the backed-up topics."""
    started = time.monotonic()
    report = SnapshotReport()
    now = now or datetime.now(UTC)
    admin = admin or AdminClient(admin_config(settings))
    timeout = settings.kafka_timeout_seconds
    wanted_filter = GroupFilter.from_settings(settings)
    with closing(db.connect(settings, autocommit=True)) as conn:
        versions = _versions_by_topic(conn, [settings.topic(spec) for spec in TOPICS])
        if versions:
            rows = _positions(admin, versions, wanted_filter, timeout, report)
            report.changed = _record(conn, rows, now)
            report.positions = len(rows)
        report.thinned = thin(
            conn, now - timedelta(hours=settings.backup_positions_full_history_hours)
        )
    report.seconds = time.monotonic() - started
    return report


def _versions_by_topic(conn: psycopg.Connection, topics: list[str]) -> dict[str, list[int]]:
    """Versions being backed up per topic, but not a version a restore wrote back into
    its topic: offsets committed there are in the restore's numbering. (A new version,
    backing up the re-created topic from offset 0, is in the topic's numbering again.)"""
    rows = conn.execute(
        "SELECT kafka_topic, version FROM backup_versions b WHERE state <> 'retired' "
        "AND kafka_topic = ANY(%s) AND NOT EXISTS (SELECT 1 FROM restore_runs r "
        "WHERE r.target_topic = b.kafka_topic AND r.version = b.version) ORDER BY 1, 2",
        (topics,),
    ).fetchall()
    out: dict[str, list[int]] = {}
    for topic, version in rows:
        out.setdefault(topic, []).append(int(version))
    return out


Row = tuple[int, str, str, int, int, str]


def _positions(
    admin: AdminClient,
    versions: dict[str, list[int]],
    wanted: GroupFilter,
    timeout: float,
    report: SnapshotReport,
) -> list[Row]:
    try:
        listed = admin.list_consumer_groups(request_timeout=timeout).result()
    except KafkaException as exc:
        serve_admin_log(admin)
        raise KafkaUnavailableError(f"cannot list consumer groups: {exc}") from None
    groups = {g.group_id: group_state(g.state) for g in listed.valid if wanted.wants(g.group_id)}
    report.groups_listed = len(listed.valid)
    futures = {
        group: admin.list_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group)], request_timeout=timeout
        )[group]
        for group in groups
    }
    rows: list[Row] = []
    for group, future in futures.items():
        try:
            result = future.result()
        except KafkaException as exc:
            # One group's failure (deleted meanwhile, no ACL) must not lose the others'.
            report.problems.append(f"group {group}: {exc}")
            continue
        report.groups_read += 1
        for tp in result.topic_partitions or []:
            if tp.topic not in versions or tp.offset < 0 or tp.error is not None:
                continue
            for version in versions[tp.topic]:
                rows.append((version, tp.topic, group, tp.partition, tp.offset, groups[group]))
    return rows


def _record(conn: psycopg.Connection, rows: list[Row], now: datetime) -> int:
    """Write changed positions; move ``last_seen_at`` of unchanged ones. Returns changed."""
    if not rows:
        return 0
    columns = list(zip(*rows, strict=True))
    with conn.transaction():
        result = conn.execute(
            """
            WITH snap AS (
                SELECT * FROM unnest(%(v)s::smallint[], %(t)s::text[], %(g)s::text[],
                                     %(p)s::int[], %(o)s::bigint[], %(s)s::text[])
                    AS s(version, kafka_topic, group_id, kafka_partition, committed_offset,
                         group_state)
            ),
            latest AS (
                SELECT s.*, l.seen_at AS latest_seen_at,
                       l.committed_offset = s.committed_offset
                           AND l.group_state = s.group_state AS same
                FROM snap s
                LEFT JOIN LATERAL (
                    SELECT c.seen_at, c.committed_offset, c.group_state
                    FROM consumer_group_positions c
                    WHERE c.version = s.version AND c.kafka_topic = s.kafka_topic
                      AND c.group_id = s.group_id AND c.kafka_partition = s.kafka_partition
                    ORDER BY c.seen_at DESC LIMIT 1
                ) l ON true
            ),
            touched AS (
                UPDATE consumer_group_positions c SET last_seen_at = %(now)s
                FROM latest l
                WHERE l.same AND c.version = l.version AND c.kafka_topic = l.kafka_topic
                  AND c.group_id = l.group_id AND c.kafka_partition = l.kafka_partition
                  AND c.seen_at = l.latest_seen_at
                RETURNING 1
            )
            INSERT INTO consumer_group_positions (version, kafka_topic, group_id,
                kafka_partition, committed_offset, group_state, seen_at, last_seen_at)
            SELECT version, kafka_topic, group_id, kafka_partition, committed_offset,
                   group_state, %(now)s, %(now)s
            FROM latest WHERE same IS NOT TRUE
            ON CONFLICT DO NOTHING
            """,
            {
                "v": list(columns[0]),
                "t": list(columns[1]),
                "g": list(columns[2]),
                "p": list(columns[3]),
                "o": list(columns[4]),
                "s": list(columns[5]),
                "now": now,
            },
        )
        return result.rowcount


def thin(conn: psycopg.Connection, before: datetime) -> int:
    """Keep the last row per hour of history older than ``before``; returns rows deleted."""
    result = conn.execute(
        """
        DELETE FROM consumer_group_positions c
        USING (
            SELECT version, kafka_topic, group_id, kafka_partition, seen_at,
                   row_number() OVER (
                       PARTITION BY version, kafka_topic, group_id, kafka_partition,
                                    date_trunc('hour', seen_at)
                       ORDER BY seen_at DESC) AS rank
            FROM consumer_group_positions WHERE seen_at < %s
        ) old
        WHERE old.rank > 1 AND c.version = old.version AND c.kafka_topic = old.kafka_topic
          AND c.group_id = old.group_id AND c.kafka_partition = old.kafka_partition
          AND c.seen_at = old.seen_at
        """,
        (before,),
    )
    return result.rowcount
