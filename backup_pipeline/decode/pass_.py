"""The decode pass: raw Avro rows past the decode watermark -> typed rows, incrementally.

Per (table, version, partition) and batch, one transaction: move the watermark row from
the offset the batch's raw rows were read after to the last of them (compare-and-set: it
takes the row lock and fails if another decoder moved it first), write their decoded rows
(COPY) and list the undecodable ones, commit. A crash anywhere rolls the whole batch back,
so the next pass starts from the same watermark: nothing lost, nothing twice. Two decoders
on the same partition queue on the watermark row lock; the second finds it moved, rolls
back and reads again from the first's new watermark, so they cannot write a row twice.

Before the new rows, the pass retries the undecodable rows waiting for a schema whose id
has become known (or can be resolved now: registry back); ``retry_all`` retries every
open one (after a new vendored schema, ``backup-pipeline decode --retry-undecodable``).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.abc import Params
from psycopg.copy import FileWriter
from psycopg.types.string import BytesBinaryDumper

from backup_pipeline import failpoints
from backup_pipeline.decode.catalog import AvroTable
from backup_pipeline.decode.decoder import (
    WAITING_FOR_SCHEMA,
    Decoder,
    Undecodable,
    as_python,
    copy_types,
    decoder_for,
    schema_id_of,
)
from backup_pipeline.decode.resolver import Executes, Resolver

log = logging.getLogger(__name__)


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


def versions_and_partitions(conn: psycopg.Connection[Any], topic: str) -> list[tuple[int, int]]:
    """Every (version, partition) the raw backup keeps for the topic, new versions included."""
    rows = conn.execute(
        "SELECT version, kafka_partition FROM bekreftelse_hwm WHERE kafka_topic = %s "
        "ORDER BY version, kafka_partition",
        (topic,),
    ).fetchall()
    conn.commit()
    return [(int(v), int(p)) for v, p in rows]


def decode_pass(
    conn: psycopg.Connection[Any],
    table: AvroTable,
    topic: str,
    resolver: Resolver,
    *,
    batch_size: int = 5000,
    retry_all: bool = False,
    max_rows: int | None = None,
    writers: Sequence[psycopg.Connection[Any]] = (),
) -> DecodeReport:
    """Decode everything after the watermarks (up to ``max_rows`` raw rows) and retry the
    undecodable rows that may decode now. ``conn`` must not be in autocommit mode.

    Batches are written on ``writers`` (connections of their own, several batches at
    once) when given, else on ``conn`` between its reads."""
    report = DecodeReport(table.raw_table)
    resolver.load(conn)
    conn.commit()
    retry_undecodable(conn, table, resolver, report, retry_all=retry_all, batch_size=batch_size)
    partitions = versions_and_partitions(conn, topic)
    with _Writer(list(writers) or [conn], table, shared=not writers) as writer:
        # Another decoder moved a watermark under us: its batch stands, ours was rolled
        # back; start again from the watermarks as they are now.
        while not _decode_batches(
            conn, writer, table, resolver, partitions, batch_size, max_rows, report
        ):
            conn.rollback()
            resolver.load(conn)  # forgets ids kept by the rolled-back batches
            conn.commit()
    return report


@dataclass
class _Batch:
    """Raw rows read after a partition's watermark, and what they decoded to."""

    version: int
    partition: int
    after: int  # the watermark they were read after: moved only if it still holds
    raw: list[tuple[int, bytes]]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    failed: list[tuple[Any, ...]] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)
    stream: memoryview | None = None  # the rows as one binary COPY stream


def _decode_batches(
    conn: psycopg.Connection[Any],
    writer: _Writer,
    table: AvroTable,
    resolver: Resolver,
    partitions: list[tuple[int, int]],
    batch_size: int,
    max_rows: int | None,
    report: DecodeReport,
) -> bool:
    """Read, decode and write batch after batch; False if another decoder moved a
    watermark meanwhile (then nothing of this call after that batch was committed).

    Batch k+1 is decoded (this thread) while batch k is written (writer threads), so
    PostgreSQL stores batches while Python decodes the next. Only a writer's transaction
    moves a watermark, and only from the offset its rows were read after (compare-and-set
    under the row lock), so rows read outside that transaction are never written twice,
    by this decoder or another. Partitions take turns, so that with several writers the
    batches in flight are of different partitions and do not queue on one watermark."""
    marks = _watermarks(conn, table, partitions)
    pending = list(partitions)
    turn = 0
    read = report.raw_rows

    def next_batch() -> _Batch | None:
        nonlocal read, turn
        while pending:
            limit = batch_size if max_rows is None else min(batch_size, max_rows - read)
            if limit <= 0:
                return None
            turn %= len(pending)
            version, partition = pending[turn]
            after = marks[(version, partition)]
            raw = _read_raw(conn, table, version, partition, after, limit)
            if raw:
                marks[(version, partition)] = raw[-1][0]
                read += len(raw)
                turn += 1
                return _Batch(version, partition, after, raw)
            pending.pop(turn)
        return None

    batch = next_batch()
    if writer.shared:
        while batch is not None:
            # The resolver may keep a schema: on the connection, once the writes are done,
            # in the transaction that then writes this batch.
            _decode_batch(_After(conn, writer.wait), table, resolver, batch, report)
            batch.stream = writer.encode(batch.rows)
            if not writer.settle(report):
                return False
            following = next_batch()  # on the connection before the writer takes it
            if not writer.submit(batch, report):
                return False
            batch = following
    else:
        # The next batch is read (a thread of its own, on the reading connection) while
        # this one is decoded.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-reader") as reader:
            while batch is not None:
                ahead = reader.submit(next_batch)
                _decode_batch(_After(conn, ahead.exception), table, resolver, batch, report)
                batch.stream = writer.encode(batch.rows)
                following = ahead.result()
                conn.commit()  # a schema the resolver kept, before any row that uses it
                if not writer.submit(batch, report):
                    writer.settle(report)
                    return False
                batch = following
    if not writer.settle(report):
        return False
    conn.commit()
    return True


def _watermarks(
    conn: psycopg.Connection[Any], table: AvroTable, partitions: list[tuple[int, int]]
) -> dict[tuple[int, int], int]:
    marks = {}
    for version, partition in partitions:
        key = (table.raw_table, version, partition)
        conn.execute(
            "INSERT INTO backup_decode_hwm (table_name, version, kafka_partition, kafka_offset) "
            "VALUES (%s, %s, %s, -1) ON CONFLICT DO NOTHING",
            key,
        )
        row = conn.execute(
            "SELECT kafka_offset FROM backup_decode_hwm "
            "WHERE table_name = %s AND version = %s AND kafka_partition = %s",
            key,
        ).fetchone()
        assert row is not None
        marks[(version, partition)] = int(row[0])
    conn.commit()
    return marks


def _read_raw(
    conn: psycopg.Connection[Any],
    table: AvroTable,
    version: int,
    partition: int,
    after: int,
    limit: int,
) -> list[tuple[int, bytes]]:
    # Binary results: bytea arrives as bytes, without the hex text round trip.
    return (
        conn.cursor(binary=True)
        .execute(
            sql.SQL(
                "SELECT kafka_offset, data FROM {} WHERE version = %s AND kafka_partition = %s "
                "AND kafka_offset > %s ORDER BY kafka_offset LIMIT %s"
            ).format(sql.Identifier(table.raw_table)),
            (version, partition, after, limit),
        )
        .fetchall()
    )


def _decode_batch(
    conn: Executes, table: AvroTable, resolver: Resolver, batch: _Batch, report: DecodeReport
) -> None:
    version, partition, raw_table = batch.version, batch.partition, table.raw_table
    rows, failed, by_kind, seen = batch.rows, batch.failed, batch.by_kind, report.schema_ids
    # Per schema id of the batch, its decoding function while the resolver's schema
    # for the id stays the one it was made for.
    decoders: dict[int, Decoder] = {}
    for offset, value in batch.raw:
        schema_id: int | None = None
        try:
            schema_id = schema_id_of(value)
            decode_one = decoders.get(schema_id)
            if decode_one is None:
                seen.add(schema_id)
                writer = resolver.known.get(schema_id)
                if writer is not None:
                    decode_one = decoders[schema_id] = decoder_for(table, writer)
            try:
                columns = decode_one(value) if decode_one is not None else None
            except Undecodable:
                columns = None
            if columns is None:
                # A new id, or one whose kept schema does not read the value: the resolver
                # resolves, re-attributes or says why not.
                decoders.pop(schema_id, None)
                columns = resolver.decode(conn, table, schema_id, value)
            rows.append((version, partition, offset, schema_id, *columns))
        except Undecodable as exc:
            failed.append((raw_table, version, partition, offset, schema_id, exc.kind, exc.reason))
            by_kind[exc.kind] = by_kind.get(exc.kind, 0) + 1


class _After:
    """The reading connection for the resolver (rarely: a new schema id), once what else
    uses it (a write, a read ahead) is done."""

    def __init__(self, conn: psycopg.Connection[Any], done: Callable[[], object]) -> None:
        self._conn = conn
        self._done = done

    def execute(self, query: str, params: Params | None = None) -> psycopg.Cursor[Any]:
        self._done()
        return self._conn.execute(query, params)


class _Writer:
    """Writes batches in threads of their own, one connection each, one batch per
    connection at a time, settled in the order they were handed over.

    A batch's transaction moves its partition's watermark from the offset the rows were
    read after (or finds another decoder moved it: then it rolls back and says so),
    COPYs the rows, lists the undecodable ones and commits. Rows are encoded into the
    COPY stream on the decoding thread (``encode``), so the writer threads hold the GIL
    only to hand bytes to libpq and wait for PostgreSQL without it. ``shared``: the one
    connection is also the pass's reading connection.
    """

    def __init__(
        self, connections: list[psycopg.Connection[Any]], table: AvroTable, *, shared: bool
    ) -> None:
        self.shared = shared
        self._connections = connections
        self._table = table
        self._copy = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(table.decoded_table),
            sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns),
        )
        self._types = copy_types(table)
        # The encoder's cursor never sends anything; its dumpers are made now, on this
        # thread, before a writer thread uses the connection.
        self._encoder = connections[0].cursor()
        # By type OID psycopg dumps bytea (the uuid columns) with its DB-API ``Binary``
        # dumper, in Python; the compiled BytesBinaryDumper does the same in C.
        self._encoder.adapters.register_dumper(None, BytesBinaryDumper)
        self.encode([])
        self._pools = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"decode-writer-{i}")
            for i in range(len(connections))
        ]
        self._in_flight: deque[tuple[Future[bool], _Batch]] = deque()
        self._submitted = 0

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        for pool in self._pools:
            pool.shutdown(wait=True)

    def encode(self, rows: list[tuple[Any, ...]]) -> memoryview:
        buffer = io.BytesIO()
        with psycopg.Copy(self._encoder, binary=True, writer=FileWriter(buffer)) as copy:
            copy.set_types(self._types)
            for row in rows:
                copy.write_row(row)
        return buffer.getbuffer()

    def submit(self, batch: _Batch, report: DecodeReport) -> bool:
        """Hand the batch to the next connection once its last batch is settled; False
        (and the batch not handed over) if a batch settled meanwhile was refused."""
        while len(self._in_flight) >= len(self._connections):
            if not self._settle_oldest(report):
                return False
        # Round robin with settling in order: the oldest batch was on this connection.
        lane = self._submitted % len(self._connections)
        self._submitted += 1
        conn = self._connections[lane]
        self._in_flight.append((self._pools[lane].submit(self._write, conn, batch), batch))
        return True

    def wait(self) -> None:
        """Until no batch is being written."""
        for future, _ in self._in_flight:
            future.exception()

    def settle(self, report: DecodeReport) -> bool:
        """Wait for every batch in flight and count those that committed; False if
        another decoder had moved the watermark of one (nothing of that one was written)."""
        ok = True
        while self._in_flight:
            ok = self._settle_oldest(report) and ok
        return ok

    def _settle_oldest(self, report: DecodeReport) -> bool:
        future, batch = self._in_flight.popleft()
        if not future.result():  # raises what the write raised
            return False
        report.decoded += len(batch.rows)
        report.undecodable += len(batch.failed)
        report.raw_rows += len(batch.raw)
        report.batches += 1
        for kind, n in batch.by_kind.items():
            report.by_kind[kind] = report.by_kind.get(kind, 0) + n
        return True

    def _write(self, conn: psycopg.Connection[Any], batch: _Batch) -> bool:
        try:
            moved = conn.execute(
                "UPDATE backup_decode_hwm SET kafka_offset = %s WHERE table_name = %s "
                "AND version = %s AND kafka_partition = %s AND kafka_offset = %s",
                (
                    batch.raw[-1][0],
                    self._table.raw_table,
                    batch.version,
                    batch.partition,
                    batch.after,
                ),
            )
            if moved.rowcount != 1:
                conn.rollback()
                return False
            if batch.rows:
                assert batch.stream is not None
                with conn.cursor().copy(self._copy) as copy:
                    copy.write(batch.stream)
            failpoints.hit("decode_after_copy")
            if batch.failed:
                _list_undecodable(conn, batch.failed)
            failpoints.hit("decode_before_commit")
            conn.commit()
        except BaseException:
            # Release the watermark's row lock now: a batch of the same partition on
            # another connection waits for it.
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            raise
        return True


def _list_undecodable(conn: psycopg.Connection[Any], failed: list[tuple[Any, ...]]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO backup_undecodable (table_name, version, kafka_partition,
                kafka_offset, schema_id, reason_kind, reason)
            VALUES (%s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (table_name, version, kafka_partition, kafka_offset) DO UPDATE SET
                schema_id = EXCLUDED.schema_id, reason_kind = EXCLUDED.reason_kind,
                reason = EXCLUDED.reason, last_tried_at = now(),
                attempts = backup_undecodable.attempts + 1, resolved_at = NULL
            """,
            failed,
        )


def retry_undecodable(
    conn: psycopg.Connection[Any],
    table: AvroTable,
    resolver: Resolver,
    report: DecodeReport,
    *,
    retry_all: bool = False,
    batch_size: int = 5000,
) -> None:
    """Decode the open undecodable rows that may decode now; a row that still fails keeps
    its listing with the new reason and one more attempt."""
    # Per pass this reads only the ids of open rows (a partial index), so a pile of rows
    # that cannot decode yet costs nothing until something changed for their id:
    # - its schema was kept or re-attributed since the row was last tried (another row,
    #   another process, the registry back);
    # - it waits for the registry and the resolver's backoff says: ask again.
    ids = conn.execute(
        """
        SELECT u.schema_id, bool_or(s.resolved_at > u.last_tried_at),
               bool_or(s.schema_id IS NULL AND u.reason_kind = ANY(%s))
        FROM backup_undecodable u LEFT JOIN backup_schemas s USING (schema_id)
        WHERE u.table_name = %s AND u.resolved_at IS NULL AND u.schema_id IS NOT NULL
        GROUP BY u.schema_id
        """,
        (list(WAITING_FOR_SCHEMA), table.raw_table),
    ).fetchall()
    conn.commit()
    candidates = [
        int(schema_id)
        for schema_id, changed, waiting in ids
        if changed or (waiting and resolver.may_ask_registry(int(schema_id)))
    ]
    if not candidates and not retry_all:
        return
    after = 0
    while True:
        rows = conn.execute(
            sql.SQL(
                """
                SELECT u.id, u.version, u.kafka_partition, u.kafka_offset, r.data
                FROM backup_undecodable u
                JOIN {} r USING (version, kafka_partition, kafka_offset)
                WHERE u.table_name = %s AND u.resolved_at IS NULL AND u.id > %s
                  AND (%s OR u.schema_id = ANY(%s))
                ORDER BY u.id LIMIT %s
                FOR UPDATE OF u SKIP LOCKED
                """
            ).format(sql.Identifier(table.raw_table)),
            (table.raw_table, after, retry_all, candidates, batch_size),
        ).fetchall()
        if not rows:
            conn.commit()
            return
        done: list[int] = []
        still: list[tuple[Any, ...]] = []
        inserts: list[tuple[Any, ...]] = []
        for row_id, version, partition, offset, data in rows:
            value = bytes(data)
            schema_id: int | None = None
            try:
                schema_id = schema_id_of(value)
                columns = resolver.decode(conn, table, schema_id, value)
                inserts.append((version, partition, offset, schema_id, *as_python(table, columns)))
                done.append(row_id)
            except Undecodable as exc:
                still.append(
                    (table.raw_table, version, partition, offset, schema_id, exc.kind, exc.reason)
                )
        if inserts:
            names = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
            marks = sql.SQL(", ").join(sql.Placeholder() * len(table.columns))
            with conn.cursor() as cur:
                cur.executemany(
                    sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
                        sql.Identifier(table.decoded_table), names, marks
                    ),
                    inserts,
                )
            conn.execute(
                "UPDATE backup_undecodable SET resolved_at = now(), last_tried_at = now(), "
                "attempts = attempts + 1 WHERE id = ANY(%s)",
                (done,),
            )
        if still:
            _list_undecodable(conn, still)
        conn.commit()
        report.redecoded += len(done)
        after = int(rows[-1][0])


@dataclass(frozen=True)
class DecodeStatus:
    decoded_rows: int
    open_undecodable: int  # not decoded since, whether acknowledged or not
    unacknowledged: int
    schema_ids: list[int]
    by_kind: dict[str, int]


def status(conn: psycopg.Connection[Any], table: AvroTable) -> DecodeStatus:
    """What the Dagster asset shows and its check judges."""
    decoded = conn.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.decoded_table))
    ).fetchone()
    kinds = conn.execute(
        "SELECT reason_kind, count(*), count(*) FILTER (WHERE acknowledged_at IS NULL) "
        "FROM backup_undecodable WHERE table_name = %s AND resolved_at IS NULL "
        "GROUP BY reason_kind",
        (table.raw_table,),
    ).fetchall()
    ids = conn.execute(
        "SELECT schema_id FROM backup_schemas WHERE record_name = %s "
        "UNION SELECT schema_id FROM backup_undecodable WHERE table_name = %s "
        "AND resolved_at IS NULL AND schema_id IS NOT NULL ORDER BY 1",
        (table.record_name, table.raw_table),
    ).fetchall()
    conn.commit()
    return DecodeStatus(
        decoded_rows=int(decoded[0]) if decoded else 0,
        open_undecodable=sum(int(k[1]) for k in kinds),
        unacknowledged=sum(int(k[2]) for k in kinds),
        schema_ids=[int(i[0]) for i in ids],
        by_kind={str(k[0]): int(k[1]) for k in kinds},
    )


def acknowledge(
    conn: psycopg.Connection[Any], table: AvroTable, up_to_id: int, by: str, note: str
) -> int:
    """Mark the open undecodable rows up to ``up_to_id`` as reviewed; returns how many."""
    count = conn.execute(
        "UPDATE backup_undecodable SET acknowledged_at = now(), acknowledged_by = %s, "
        "acknowledged_note = %s WHERE table_name = %s AND id <= %s "
        "AND resolved_at IS NULL AND acknowledged_at IS NULL",
        (by, note, table.raw_table, up_to_id),
    ).rowcount
    conn.commit()
    return count
