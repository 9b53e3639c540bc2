"""DataFrames of the backup for notebooks: the serving version's typed records.

    from backup_pipeline import analysts
    with analysts.connect() as conn:  # DATABASE_URL / PG* / TLS, as the service reads them
        df = analysts.read_frame(conn, "bekreftelse_hendelser_typed",
                                 start=datetime(2025, 1, 1, tzinfo=UTC), end=...)
        for chunk in analysts.read_chunks(conn, "bekreftelser_decoded", chunk_rows=50_000):
            ...

Rows come through a server-side cursor, ``chunk_rows`` at a time, so a window of millions
of rows needs the memory of one chunk (``read_frame`` concatenates them: use it for what
fits). Timestamps are tz-aware (UTC), integers and booleans nullable (``Int64``,
``boolean``), text and uuids ``string``, intervals ``timedelta64``. A relation is one entry
in ``READABLE``. pandas is imported here and only here: nothing on the backup's path pays
for it.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
import psycopg
from psycopg import sql

from backup_pipeline import db
from backup_pipeline.settings import Settings, load_settings


@dataclass(frozen=True)
class Readable:
    """A relation analysts read: ``name`` holds every version, ``name_current`` the
    serving one. ``time_column`` selects a window; ``id_column`` a set of ids. Where the
    relation has no time of its own, ``time_from_raw`` takes the record's Kafka timestamp
    from ``raw_table`` (joined on version, partition and offset) as ``kafka_timestamp``."""

    name: str
    raw_table: str
    time_column: str
    id_column: str
    time_from_raw: bool = False
    order_by: tuple[str, ...] = ("kafka_partition", "kafka_offset")

    @property
    def current(self) -> str:
        return f"{self.name}_current"


READABLE: dict[str, Readable] = {
    r.name: r
    for r in (
        Readable(
            "bekreftelse_hendelser_typed",
            "bekreftelse_hendelser",
            "hendelse_tidspunkt",
            "periode_id",
        ),
        # The decoded Avro tables (docs/decoded-tables.md).
        Readable(
            "bekreftelser_decoded", "bekreftelser", "svar_sendt_inn_av_tidspunkt", "periode_id"
        ),
        Readable(
            "bekreftelse_paa_vegne_av_decoded",
            "bekreftelse_paa_vegne_av",
            "kafka_timestamp",
            "periode_id",
            time_from_raw=True,
        ),
    )
}

DEFAULT_CHUNK_ROWS = 50_000


def connect(settings: Settings | None = None) -> psycopg.Connection:
    """A connection as the service makes it (DATABASE_URL, PG* variables, TLS), in UTC."""
    conn = db.connect(settings or load_settings())
    conn.execute("SET TIME ZONE 'UTC'")
    conn.commit()
    return conn


def readable(relation: str | Readable) -> Readable:
    if isinstance(relation, Readable):
        return relation
    try:
        return READABLE[relation.removesuffix("_current")]
    except KeyError:
        known = ", ".join(sorted(READABLE))
        raise KeyError(f"unknown relation {relation!r}; known: {known}") from None


def _query(
    source: Readable,
    version: int | None,
    start: datetime | None,
    end: datetime | None,
    ids: Sequence[Any] | None,
    id_type: str,
    columns: Sequence[str] | None,
) -> tuple[sql.Composed, list[Any]]:
    relation = sql.Identifier(source.current if version is None else source.name)
    selected: sql.Composable = (
        sql.SQL(", ").join(sql.SQL("d.{}").format(sql.Identifier(c)) for c in columns)
        if columns
        else sql.SQL("d.*")
    )
    from_: sql.Composable = sql.SQL("{} d").format(relation)
    time: sql.Composable = sql.SQL("d.{}").format(sql.Identifier(source.time_column))
    if source.time_from_raw:
        raw = sql.Identifier(f"{source.raw_table}_current" if version is None else source.raw_table)
        from_ = sql.SQL("{} d JOIN {} r USING (version, kafka_partition, kafka_offset)").format(
            relation, raw
        )
        time = sql.SQL("r.kafka_timestamp")
        selected = sql.SQL("{}, r.kafka_timestamp").format(selected)
    where: list[sql.Composable] = []
    params: list[Any] = []
    if version is not None:
        where.append(sql.SQL("d.version = %s"))
        params.append(version)
    if start is not None:
        where.append(sql.SQL("{} >= %s").format(time))
        params.append(start)
    if end is not None:
        where.append(sql.SQL("{} < %s").format(time))
        params.append(end)
    if ids is not None:
        # The column's own type from the catalog, so uuid and bigint columns keep their index.
        where.append(
            sql.SQL("d.{} = ANY(%s::{}[])").format(
                sql.Identifier(source.id_column), sql.SQL(id_type)
            )
        )
        params.append([str(i) if isinstance(i, uuid.UUID) else i for i in ids])
    order = sql.SQL(", ").join(
        [time, *(sql.SQL("d.{}").format(sql.Identifier(c)) for c in source.order_by)]
    )
    query = sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {}").format(
        selected, from_, sql.SQL(" AND ").join(where) if where else sql.SQL("true"), order
    )
    return query, params


def _column_type(conn: psycopg.Connection, relation: str, column: str) -> str:
    row = conn.execute(
        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
        " WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND NOT a.attisdropped",
        (relation, column),
    ).fetchone()
    if row is None:
        raise KeyError(f"{relation} has no column {column!r} (or does not exist)")
    return str(row[0])


# PostgreSQL type name (pg_type.typname) -> pandas dtype.
_DTYPES: dict[str, str] = {
    "int2": "Int16",
    "int4": "Int32",
    "int8": "Int64",
    "float4": "Float32",
    "float8": "Float64",
    "bool": "boolean",
    "text": "string",
    "varchar": "string",
    "bpchar": "string",
    "uuid": "string",
}


def _frame(rows: Sequence[tuple[Any, ...]], names: list[str], types: list[str]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(list(rows), columns=names)
    for name, type_ in zip(names, types, strict=True):
        column = frame[name]
        if type_ == "timestamptz":
            frame[name] = pd.to_datetime(column, utc=True).astype("datetime64[us, UTC]")
        elif type_ == "timestamp":
            frame[name] = pd.to_datetime(column).astype("datetime64[us]")
        elif type_ == "interval":
            frame[name] = pd.to_timedelta(column).astype("timedelta64[us]")
        elif type_ == "uuid":
            frame[name] = column.map(lambda v: None if v is None else str(v)).astype("string")
        elif type_ in _DTYPES:
            frame[name] = column.astype(_DTYPES[type_])
        # jsonb (dicts), arrays (lists), bytea (bytes), numeric (Decimal): kept as objects.
    return frame


def read_chunks(
    conn: psycopg.Connection,
    relation: str | Readable,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    ids: Iterable[Any] | None = None,
    columns: Sequence[str] | None = None,
    version: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Iterator[pd.DataFrame]:
    """The rows of ``relation`` in [start, end) of its time column and/or with the given
    ids, ordered by time, as DataFrames of at most ``chunk_rows`` rows. ``version`` None is
    the serving version. Runs in a transaction of its own on ``conn``, ended when the
    iteration ends or is abandoned."""
    batches = _batches(conn, relation, start, end, ids, columns, version, chunk_rows)
    try:
        names, types = next(batches)
        for rows in batches:
            yield _frame(rows, names, types)
    finally:
        batches.close()


def read_frame(
    conn: psycopg.Connection,
    relation: str | Readable,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    ids: Iterable[Any] | None = None,
    columns: Sequence[str] | None = None,
    version: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> pd.DataFrame:
    """``read_chunks`` concatenated into one DataFrame (typed even when it is empty)."""
    batches = _batches(conn, relation, start, end, ids, columns, version, chunk_rows)
    with closing(batches):
        names, types = next(batches)
        frames = [_frame(rows, names, types) for rows in batches]
    if not frames:
        return _frame([], names, types)
    return pd.concat(frames, ignore_index=True)


def _batches(
    conn: psycopg.Connection,
    relation: str | Readable,
    start: datetime | None,
    end: datetime | None,
    ids: Iterable[Any] | None,
    columns: Sequence[str] | None,
    version: int | None,
    chunk_rows: int,
) -> Generator[Any, None, None]:
    """First (column names, PostgreSQL type names), then lists of up to chunk_rows rows."""
    source = readable(relation)
    for bound in (start, end):
        if bound is not None and bound.tzinfo is None:
            raise ValueError("start and end must be timezone-aware (e.g. tzinfo=UTC)")
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be at least 1")
    id_list = None if ids is None else list(ids)
    id_type = _column_type(conn, source.name, source.id_column) if id_list is not None else ""
    query, params = _query(source, version, start, end, id_list, id_type, columns)
    # A named (server-side) cursor lives in a transaction: the rows stay on the server
    # and come chunk_rows at a time.
    with (
        conn.transaction(),
        conn.cursor(name=f"analysts_{uuid.uuid4().hex[:12]}") as cursor,
    ):
        cursor.execute(query, params)
        description = cursor.description or []
        yield [c.name for c in description], [_type_name(conn, c.type_code) for c in description]
        while rows := cursor.fetchmany(chunk_rows):
            yield rows


def _type_name(conn: psycopg.Connection, oid: int) -> str:
    info = conn.adapters.types.get(oid)
    if info is not None:
        return info.name
    row = conn.execute("SELECT typname FROM pg_type WHERE oid = %s", (oid,)).fetchone()
    return str(row[0]) if row else ""
