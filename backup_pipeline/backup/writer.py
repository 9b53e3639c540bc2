"""Write one batch atomically: its rows, its quarantine rows and the new HWMs."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import psycopg
from psycopg import sql
from psycopg.copy import FileWriter
from psycopg.types.json import Jsonb, set_json_dumps
from psycopg.types.string import BytesBinaryDumper

from backup_pipeline import failpoints, hwm
from backup_pipeline.backup.records import (
    QUARANTINE_COLUMNS,
    JsonbWire,
    KafkaMessage,
    MappedBatch,
    columns,
    map_messages,
    quarantine_row,
)
from backup_pipeline.errors import BackupError, ConcurrentWriterError
from backup_pipeline.topics import TopicSpec

log = logging.getLogger(__name__)


def _dumps(obj: Any) -> bytes | str:
    # JSON text given as bytes is serialised already: pass it through.
    return obj if isinstance(obj, bytes) else json.dumps(obj)


def _copy_statement(table: str, cols: Sequence[tuple[str, str]]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c, _ in cols)
    )


def _copy_types(cols: Sequence[tuple[str, str]]) -> list[str]:
    # jsonb values arrive as JsonbWire (jsonb's binary format already): psycopg passes
    # them through as bytea and the server reads them as jsonb.
    return ["bytea" if t == "jsonb" else t for _, t in cols]


def _use_compiled_bytea_dumper(cur: psycopg.Cursor) -> None:
    # By type OID psycopg dumps bytea with its DB-API ``Binary`` dumper, a Python subclass
    # that costs a Python call per value; its compiled BytesBinaryDumper does the same
    # work in C (measured: 2 of every row's 9 fields went through Python). This cursor only.
    cur.adapters.register_dumper(None, BytesBinaryDumper)


def copy_rows(
    cur: psycopg.Cursor,
    table: str,
    cols: Sequence[tuple[str, str]],
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Binary COPY of mapped rows, encoded while they are sent (quarantine rows, and the
    benchmark's raw-COPY baseline)."""
    _use_compiled_bytea_dumper(cur)
    with cur.copy(_copy_statement(table, cols)) as copy:
        copy.set_types(_copy_types(cols))
        for row in rows:
            copy.write_row(row)


class CopyEncoder:
    """Encodes a batch's rows into one binary COPY stream, off the connection.

    The pass calls it on the thread that maps records, so the writer thread only hands
    finished bytes to libpq and waits for PostgreSQL without the GIL. Encoding row by row
    on the writer thread made it compete with the mapping for the GIL and left PostgreSQL
    idle meanwhile (measured in bench/: the pass went from 0.57 to 0.75 of a raw COPY).

    It uses psycopg's own encoder (``Copy`` with a ``FileWriter``) on a cursor it creates
    before any write starts; that cursor never sends anything. Its dumpers are created at
    construction, before any writer thread exists (a varchar dumper reads the connection's
    client encoding when it is made), and reused afterwards, so the encoder never touches
    the connection while a writer thread uses it.
    """

    def __init__(self, conn: psycopg.Connection, cols: Sequence[tuple[str, str]]) -> None:
        self._cursor = conn.cursor()
        _use_compiled_bytea_dumper(self._cursor)
        self._types = _copy_types(cols)
        self.encode(())  # makes and caches the dumpers now, on this thread

    def encode(self, rows: Sequence[tuple[Any, ...]]) -> memoryview:
        buffer = io.BytesIO()
        with psycopg.Copy(self._cursor, binary=True, writer=FileWriter(buffer)) as copy:
            copy.set_types(self._types)
            for row in rows:
                copy.write_row(row)
        return buffer.getbuffer()  # a view, not a copy: a batch can be tens of MB


def copy_encoded(
    cur: psycopg.Cursor, table: str, cols: Sequence[tuple[str, str]], stream: memoryview
) -> None:
    """COPY a stream made by CopyEncoder (signature, rows and trailer included)."""
    with cur.copy(_copy_statement(table, cols)) as copy:
        copy.write(stream)  # psycopg hands it to libpq in 128 KB slices of the view


def _insert_one(
    cur: psycopg.Cursor, table: str, cols: Sequence[tuple[str, str]], row: tuple[Any, ...]
) -> None:
    statement = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
        sql.Identifier(table),
        sql.SQL(", ").join(sql.Identifier(c) for c, _ in cols),
        sql.SQL(", ").join(sql.SQL("%s::") + sql.SQL(t) for _, t in cols),
    )
    # A parameter is sent as text: the JSON text of a JsonbWire, wrapped in Jsonb (the
    # cursor's json dumps passes the bytes through).
    values = [Jsonb(v.json) if isinstance(v, JsonbWire) else v for v in row]
    cur.execute(statement, values)


def write_batch(
    conn: psycopg.Connection,
    after: Future[MappedBatch] | None,
    *,
    spec: TopicSpec,
    topic: str,
    version: int,
    messages: list[KafkaMessage],
    mapped: MappedBatch,
    hwm_moves: dict[int, tuple[int, int]],
    rows_stream: memoryview | None,
) -> MappedBatch:
    """Store a mapped batch and move the HWMs in one transaction; return what went where.

    ``after`` is the write of the batch before this one (writer_lanes): the HWMs move and
    the transaction commits only once that one committed; if it failed, this one rolls back.

    ``rows_stream`` is the batch's rows encoded by a CopyEncoder (None: no rows); the pass
    maps and encodes the next batch while this one is written. If PostgreSQL refuses a
    row that the mapping let through (something only the server knows, e.g. a number out
    of numeric's range), the batch is mapped again and written row by row, and the refused
    rows go to quarantine with the server's message: never a stall.
    """
    try:
        try:
            _write(conn, spec, topic, version, mapped, hwm_moves, rows_stream, after)
        except _PredecessorStillRunning:
            # Rolled back, so it holds no lock the batch before it could be waiting for
            # (PostgreSQL cannot see a wait between our threads, so it would never break
            # such a cycle). Write it again once that batch is done.
            _wait_for(after)
            _write(conn, spec, topic, version, mapped, hwm_moves, rows_stream, None)
    except psycopg.DataError as exc:
        log.warning(
            "batch refused by PostgreSQL (%s); isolating the refused rows", exc.diag.message_primary
        )
        _wait_for(after)  # before the slow path opens its transaction, for the same reason
        mapped = _write_row_by_row(conn, spec, topic, version, messages, hwm_moves)
    except psycopg.errors.UniqueViolation:
        raise ConcurrentWriterError(
            f"rows of this batch of {topic} version {version} are stored already (another "
            "writer?); the batch was rolled back"
        ) from None
    return mapped


# How long a batch, its rows copied, waits in its transaction for the batch before it to
# commit. Normally that one is done already (it started first); a longer wait means it is
# blocked, possibly behind a lock request that waits for this transaction's locks.
PREDECESSOR_PATIENCE_SECONDS = 10.0


class _PredecessorStillRunning(Exception):
    pass


def _write(
    conn: psycopg.Connection,
    spec: TopicSpec,
    topic: str,
    version: int,
    mapped: MappedBatch,
    hwm_moves: dict[int, tuple[int, int]],
    rows_stream: memoryview | None,
    after: Future[MappedBatch] | None,
) -> None:
    with conn.transaction(), conn.cursor() as cur:
        if rows_stream is not None:
            copy_encoded(cur, spec.table, columns(spec.value_format), rows_stream)
        failpoints.hit("rows_copied")
        if mapped.quarantine:
            copy_rows(cur, "backup_quarantine", QUARANTINE_COLUMNS, mapped.quarantine)
        _wait_for(after, PREDECESSOR_PATIENCE_SECONDS)
        hwm.advance(conn, version, topic, hwm_moves)
        failpoints.hit("before_commit")
    failpoints.hit("after_commit")


def _write_row_by_row(
    conn: psycopg.Connection,
    spec: TopicSpec,
    topic: str,
    version: int,
    messages: list[KafkaMessage],
    hwm_moves: dict[int, tuple[int, int]],
) -> MappedBatch:
    # The pass dropped the batch's row tuples once they were encoded; map them again.
    mapped = map_messages(messages, spec.value_format, version, topic)
    by_offset = {(m.partition(), m.offset()): m for m in messages}
    cols = columns(spec.value_format)
    result = MappedBatch(
        quarantine=list(mapped.quarantine),
        warnings=mapped.warnings,
        per_partition={p: list(c) for p, c in mapped.per_partition.items()},
    )
    with conn.transaction(), conn.cursor() as cur:
        set_json_dumps(_dumps, context=cur)
        for row in mapped.rows:
            try:
                with conn.transaction():  # a savepoint per row: slow, and only for this case
                    _insert_one(cur, spec.table, cols, row)
                result.rows.append(row)
            except psycopg.DataError as exc:
                partition, offset = row[1], row[2]
                reason = f"refused by PostgreSQL: {exc.diag.message_primary}"
                result.quarantine.append(
                    quarantine_row(version, topic, by_offset[(partition, offset)], reason)
                )
                counts = result.per_partition[partition]
                counts[0] -= 1
                counts[1] += 1
        if result.quarantine:
            copy_rows(cur, "backup_quarantine", QUARANTINE_COLUMNS, result.quarantine)
        hwm.advance(conn, version, topic, hwm_moves)
    return result


def _wait_for(previous: Future[MappedBatch] | None, timeout: float | None = None) -> None:
    """Go on only once the previous batch committed: HWMs move in batch order."""
    if previous is None:
        return
    try:
        failed = previous.exception(timeout)
    except FutureTimeout:
        raise _PredecessorStillRunning from None
    if failed is not None:
        raise BackupError("the previous batch was not stored; this one was rolled back")


def record_gap(
    conn: psycopg.Connection,
    version: int,
    topic: str,
    partition: int,
    first: int,
    last: int,
    kind: str,
    old_hwm: int,
) -> None:
    """Record offsets Kafka no longer holds and move the HWM past them, atomically."""
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO backup_gaps (version, kafka_topic, kafka_partition,
                                     first_lost_offset, last_lost_offset, kind)
            VALUES (%s, %s, %s, %s, %s, %s)
            ON CONFLICT (version, kafka_topic, kafka_partition, first_lost_offset)
            DO UPDATE SET last_lost_offset = GREATEST(backup_gaps.last_lost_offset,
                                                      EXCLUDED.last_lost_offset)
            """,
            (version, topic, partition, first, last, kind),
        )
        hwm.advance(conn, version, topic, {partition: (old_hwm, last)})
