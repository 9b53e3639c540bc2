"""The decode pass's batch writer: each batch in one transaction on a writer connection
of its own (moving the watermark compare-and-set, COPYing the rows, listing the
undecodable ones), several batches at once while the pass decodes the next.
"""

from __future__ import annotations

import contextlib
import io
from collections import deque
from collections.abc import Callable
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
from backup_pipeline.decode.decoder import copy_types
from backup_pipeline.decode.report import DecodeReport
from backup_pipeline.decode.undecodable import list_undecodable


@dataclass
class Batch:
    """Raw rows read after a partition's watermark, and what they decoded to."""

    version: int
    partition: int
    after: int  # the watermark they were read after: moved only if it still holds
    raw: list[tuple[int, bytes]]
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    failed: list[tuple[Any, ...]] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)
    stream: memoryview | None = None  # the rows as one binary COPY stream


class After:
    """The reading connection for the resolver (rarely: a new schema id), once what else
    uses it (a write, a read ahead) is done."""

    def __init__(self, conn: psycopg.Connection[Any], done: Callable[[], object]) -> None:
        self._conn = conn
        self._done = done

    def execute(self, query: str, params: Params | None = None) -> psycopg.Cursor[Any]:
        self._done()
        return self._conn.execute(query, params)


class Writer:
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
        self._in_flight: deque[tuple[Future[bool], Batch]] = deque()
        self._submitted = 0

    def __enter__(self) -> Writer:
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

    def submit(self, batch: Batch, report: DecodeReport) -> bool:
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

    def _write(self, conn: psycopg.Connection[Any], batch: Batch) -> bool:
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
                list_undecodable(conn, batch.failed)
            failpoints.hit("decode_before_commit")
            conn.commit()
        except BaseException:
            # Release the watermark's row lock now: a batch of the same partition on
            # another connection waits for it.
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            raise
        return True
