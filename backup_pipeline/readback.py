"""What restore and verify share about backed-up records: which table holds a topic, the
origin headers a restore adds, and reading the records back as Kafka records (those a
``backup_pipeline.selection.Selection`` picks), one partition at a time, in offset order.

Rows are read with keyset pagination (``kafka_offset > last seen ... LIMIT page``) on the
primary key, so memory stays flat whatever the table's size and every page is a short
statement on an autocommit connection. Quarantined records are raw bytes and merge into
the same offset order when asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from backup_pipeline import db
from backup_pipeline.backup.records import TRACEPARENT_HEADER, decode_headers
from backup_pipeline.errors import RestoreError
from backup_pipeline.selection import EVERYTHING, Selection
from backup_pipeline.settings import Settings
from backup_pipeline.topics import TOPICS, TopicSpec, ValueFormat, spec_for_table

Headers = list[tuple[str, bytes | None]]


@dataclass(frozen=True)
class BackedUpRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp_ms: int | None
    timestamp_type: int | None
    # False for rows that predate the headers/kafka_value columns: their headers are only
    # the traceparent and a JSON value is PostgreSQL's rendering of the jsonb.
    exact: bool
    quarantined: bool


# A restore appends these to each record's own headers (RestoreRequest.origin_headers), so
# verify can map a restored record back to its backup offset.
ORIGIN_TOPIC = "backup.source.topic"
ORIGIN_PARTITION = "backup.source.partition"
ORIGIN_OFFSET = "backup.source.offset"
ORIGIN_VERSION = "backup.version"
ORIGIN_HEADERS = (ORIGIN_TOPIC, ORIGIN_PARTITION, ORIGIN_OFFSET, ORIGIN_VERSION)


def resolve_spec(settings: Settings, table: str | None, topic: str | None) -> TopicSpec:
    """The backed-up table a restore or verify names, by table or by its source topic."""
    if table is not None:
        return spec_for_table(table)
    for spec in TOPICS:
        if settings.topic(spec) == topic:
            return spec
    raise RestoreError(f"no backed-up table for topic {topic!r}; give the table instead")


def origin_headers(topic: str, record: BackedUpRecord, version: int) -> Headers:
    return [
        (ORIGIN_TOPIC, topic.encode()),
        (ORIGIN_PARTITION, str(record.partition).encode()),
        (ORIGIN_OFFSET, str(record.offset).encode()),
        (ORIGIN_VERSION, str(version).encode()),
    ]


def split_origin(headers: Headers) -> tuple[Headers, tuple[int, int] | None]:
    """The record's own headers, and (source partition, offset) when origin headers end it."""
    n = len(ORIGIN_HEADERS)
    tail = headers[-n:]
    if len(tail) < n or tuple(name for name, _ in tail) != ORIGIN_HEADERS:
        return headers, None
    values = dict(tail)
    try:
        origin = (int(values[ORIGIN_PARTITION] or b""), int(values[ORIGIN_OFFSET] or b""))
    except ValueError:
        return headers, None
    return headers[:-n], origin


def message_headers(message: Any) -> Headers:
    """A consumed message's headers as (name, bytes) pairs, in order."""
    return [(str(name), value) for name, value in message.headers() or ()]


def _value_columns(spec: TopicSpec) -> sql.Composable:
    if spec.value_format is ValueFormat.JSON_EVENT:
        # kafka_value holds the exact bytes; older rows only have the jsonb rendering.
        return sql.SQL(
            "COALESCE(kafka_value, convert_to(data::text, 'UTF8')) AS value, "
            "(kafka_value IS NOT NULL AND headers IS NOT NULL) AS exact"
        )
    return sql.SQL("data AS value, headers IS NOT NULL AS exact")


_MILLIS = sql.SQL("(extract(epoch FROM kafka_timestamp) * 1000)::bigint")


def _conditions(selection: Selection, *, quarantine: bool, bounded: bool) -> list[sql.Composable]:
    where: list[sql.Composable] = [
        sql.SQL("version = %(version)s"),
        sql.SQL("kafka_partition = %(partition)s"),
        sql.SQL("kafka_offset > %(after)s"),
    ]
    if quarantine:
        where.append(sql.SQL("kafka_topic = %(topic)s"))
    if bounded:
        where.append(sql.SQL("kafka_offset <= %(last)s"))
    if selection.since is not None:
        where.append(sql.SQL("kafka_timestamp >= %(since)s"))
    if selection.until is not None:
        where.append(sql.SQL("kafka_timestamp < %(until)s"))
    if selection.keys is not None:
        # The seed tables hold the key as bigint; quarantine holds whatever bytes came.
        where.append(
            sql.SQL("record_key = ANY(%(raw_keys)s::bytea[])")
            if quarantine
            else sql.SQL("record_key = ANY(%(long_keys)s::bigint[])")
        )
    if selection.arbeidssoeker_ids is not None and not quarantine:
        where.append(sql.SQL("arbeidssoeker_id = ANY(%(ids)s::bigint[])"))
    return where


def _query(
    spec: TopicSpec, selection: Selection, *, bounded: bool, count: bool = False
) -> sql.Composed:  # count: (records, oldest timestamp ms, bytes of keys, values, headers)
    rows = sql.SQL(
        "SELECT kafka_partition::int AS kafka_partition, kafka_offset, "
        "int8send(record_key) AS key, {value}, headers, traceparent, "
        "{millis} AS ts, kafka_timestamp_type AS ts_type, false AS quarantined "
        "FROM {table} WHERE {where}"
    ).format(
        value=_value_columns(spec),
        millis=_MILLIS,
        table=sql.Identifier(spec.table),
        where=sql.SQL(" AND ").join(_conditions(selection, quarantine=False, bounded=bounded)),
    )
    # Quarantined records carry no arbeidssoeker_id, so a person filter leaves them out.
    if selection.include_quarantined and selection.arbeidssoeker_ids is None:
        rows = sql.SQL(
            "{rows} UNION ALL SELECT kafka_partition, kafka_offset, record_key, "
            "kafka_value, true, headers, NULL::varchar, {millis}, kafka_timestamp_type, true "
            "FROM backup_quarantine WHERE {where}"
        ).format(
            rows=rows,
            millis=_MILLIS,
            where=sql.SQL(" AND ").join(_conditions(selection, quarantine=True, bounded=bounded)),
        )
    if count:
        return sql.SQL(
            "SELECT count(*), min(ts), coalesce(sum(coalesce(octet_length(key), 0) "
            "+ coalesce(octet_length(value), 0) + coalesce(octet_length(headers::text), 0)), 0) "
            "FROM ({rows}) AS r"
        ).format(rows=rows)
    return sql.SQL("{rows} ORDER BY kafka_offset LIMIT %(page)s").format(rows=rows)


def _params(
    topic: str, version: int, partition: int, selection: Selection, after: int, last: int | None
) -> dict[str, Any]:
    keys = selection.keys or ()
    return {
        "topic": topic,
        "version": version,
        "partition": partition,
        "after": after,
        "last": last,
        "since": selection.since,
        "until": selection.until,
        "raw_keys": list(keys),
        "long_keys": [int.from_bytes(k, "big", signed=True) for k in keys if len(k) == 8],
        "ids": list(selection.arbeidssoeker_ids or ()),
    }


def _window(selection: Selection, partition: int, after: int) -> tuple[int, int | None]:
    first, last = selection.bounds(partition)
    if first is not None:
        after = max(after, first - 1)
    return after, last


def _record(row: tuple[Any, ...]) -> BackedUpRecord:
    partition, offset, key, value, exact, headers, trace, millis, ts_type, quarantined = row
    if headers is None:
        headers_list: Headers = (
            [] if trace is None else [(TRACEPARENT_HEADER, str(trace).encode("utf-8"))]
        )
    else:
        headers_list = decode_headers(headers)
    return BackedUpRecord(
        partition=partition,
        offset=offset,
        key=None if key is None else bytes(key),
        value=None if value is None else bytes(value),
        headers=headers_list,
        timestamp_ms=millis,
        timestamp_type=ts_type,
        exact=bool(exact),
        quarantined=bool(quarantined),
    )


def read_partition(
    conn: psycopg.Connection,
    spec: TopicSpec,
    topic: str,
    version: int,
    partition: int,
    selection: Selection = EVERYTHING,
    *,
    after: int = -1,
    page: int = 500,
) -> Iterator[BackedUpRecord]:
    """Backed-up records of one partition with offset > ``after``, in offset order."""
    after, last = _window(selection, partition, after)
    query = _query(spec, selection, bounded=last is not None)
    while True:
        params = _params(topic, version, partition, selection, after, last)
        params["page"] = page
        rows = conn.execute(query, params).fetchall()
        db.end_read(conn)
        for row in rows:
            yield _record(row)
        if len(rows) < page:
            return
        after = rows[-1][1]


def first_at_or_after(
    conn: psycopg.Connection,
    spec: TopicSpec,
    topic: str,
    version: int,
    partition: int,
    offset: int,
    last: int | None = None,
) -> BackedUpRecord | None:
    """The first backed-up record (quarantine included) at ``offset`` or later."""
    selection = Selection(offsets={partition: (offset, last)}, include_quarantined=True)
    return next(read_partition(conn, spec, topic, version, partition, selection, page=1), None)


@dataclass(frozen=True)
class Extent:
    """What a selection holds in one partition."""

    records: int
    oldest_ms: int | None  # the oldest record timestamp; None when no row has one
    # Key, value and header bytes (headers as stored, a little more than on the wire).
    payload_bytes: int


def extent(
    conn: psycopg.Connection,
    spec: TopicSpec,
    topic: str,
    version: int,
    partition: int,
    selection: Selection = EVERYTHING,
    *,
    after: int = -1,
) -> Extent:
    after, last = _window(selection, partition, after)
    row = conn.execute(
        _query(spec, selection, bounded=last is not None, count=True),
        _params(topic, version, partition, selection, after, last),
    ).fetchone()
    db.end_read(conn)
    if row is None:
        return Extent(0, None, 0)
    return Extent(int(row[0]), None if row[1] is None else int(row[1]), int(row[2]))


def count(
    conn: psycopg.Connection,
    spec: TopicSpec,
    topic: str,
    version: int,
    partition: int,
    selection: Selection = EVERYTHING,
    *,
    after: int = -1,
) -> int:
    return extent(conn, spec, topic, version, partition, selection, after=after).records


def known_partitions(conn: psycopg.Connection, spec: TopicSpec, topic: str, version: int) -> int:
    """How many partitions the backup knows of (highest partition + 1), 0 if none."""
    row = conn.execute(
        sql.SQL(
            "SELECT greatest("
            "(SELECT max(kafka_partition) FROM bekreftelse_hwm "
            " WHERE version = %(v)s AND kafka_topic = %(t)s), "
            "(SELECT max(kafka_partition) FROM {table} WHERE version = %(v)s), "
            "(SELECT max(kafka_partition) FROM backup_quarantine "
            " WHERE version = %(v)s AND kafka_topic = %(t)s))"
        ).format(table=sql.Identifier(spec.table)),
        {"v": version, "t": topic},
    ).fetchone()
    db.end_read(conn)
    return 0 if row is None or row[0] is None else int(row[0]) + 1
