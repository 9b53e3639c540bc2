"""Decoders that race on the same partitions: the watermark moves by compare-and-set in
the batch's transaction, so a batch read before another decoder moved the watermark is
rolled back whole and read again, and every raw row is decoded exactly once."""

from __future__ import annotations

import random
import threading
from contextlib import ExitStack
from typing import Any

import psycopg
import pytest

from backup_pipeline.decode import pass_
from backup_pipeline.decode.catalog import BEKREFTELSER
from backup_pipeline.decode.pass_ import decode_pass
from backup_pipeline.decode.report import DecodeReport
from backup_pipeline.decode.resolver import Resolver
from backup_pipeline.demo.data import avro_value
from dev.harness.waits import bounded

TOPIC = "t-bekreftelser"


def store_raw(db: psycopg.Connection, values: list[bytes], partition: int) -> None:
    """Raw rows as the backup writes them, and the HWM row that names the partition."""
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO bekreftelser (version, kafka_partition, kafka_offset, record_key, data) "
            "VALUES (1, %s, %s, 1, %s)",
            [(partition, 3 * i, v) for i, v in enumerate(values)],
        )
        cur.execute(
            "INSERT INTO bekreftelse_hwm (version, kafka_partition, kafka_offset, kafka_topic) "
            "VALUES (1, %s, %s, %s)",
            (partition, 3 * (len(values) - 1), TOPIC),
        )


def test_a_batch_read_before_another_decoder_moved_the_watermark_is_read_again(
    db, database_url, monkeypatch
):
    rng = random.Random(21)
    store_raw(db, [avro_value(rng, "bekreftelser") for _ in range(30)], partition=0)
    read_raw = pass_._read_raw
    raced: list[DecodeReport] = []
    racing = threading.Event()

    def read_then_race(*args: Any) -> Any:
        rows = read_raw(*args)
        if not racing.is_set():
            racing.set()
            # Right after the first decoder read its first batch (offsets 0..18), a second
            # one decodes the first 10 rows and commits.
            with psycopg.connect(database_url) as other:
                raced.append(
                    decode_pass(other, BEKREFTELSER, TOPIC, Resolver(), batch_size=10, max_rows=10)
                )
        return rows

    monkeypatch.setattr(pass_, "_read_raw", read_then_race)
    with psycopg.connect(database_url) as conn:
        report = decode_pass(conn, BEKREFTELSER, TOPIC, Resolver(), batch_size=7)

    assert raced[0].decoded == 10
    # The batch read before the race was rolled back, not written again: the first decoder
    # started over from the second one's watermark and decoded the 20 rows after it.
    assert report.decoded == 20
    offsets = db.execute("SELECT kafka_offset FROM bekreftelser_decoded ORDER BY 1").fetchall()
    assert [o for (o,) in offsets] == [3 * i for i in range(30)]
    assert db.execute(
        "SELECT kafka_offset FROM backup_decode_hwm WHERE table_name = 'bekreftelser'"
    ).fetchone() == (87,)


@pytest.mark.parametrize("writers", [0, 2], ids=["on-its-connection", "two-writers"])
def test_two_decoders_racing_over_a_backlog_decode_every_row_exactly_once(
    db, database_url, writers
):
    rng = random.Random(22)
    for partition in (0, 1, 2):
        store_raw(db, [avro_value(rng, "bekreftelser") for _ in range(400)], partition)
    values = [b"broken"] * 5
    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO bekreftelser (version, kafka_partition, kafka_offset, record_key, data) "
            "VALUES (1, 0, %s, 1, %s)",
            [(2000 + i, v) for i, v in enumerate(values)],
        )
    reports: list[DecodeReport] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def decoder() -> None:
        try:
            with ExitStack() as stack:
                conn = stack.enter_context(psycopg.connect(database_url))
                own = [stack.enter_context(psycopg.connect(database_url)) for _ in range(writers)]
                start.wait(timeout=bounded(30))
                reports.append(
                    decode_pass(conn, BEKREFTELSER, TOPIC, Resolver(), batch_size=9, writers=own)
                )
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    threads = [threading.Thread(target=decoder) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=bounded(120))
    assert not errors, errors
    assert len(reports) == 2

    good: list[Any] = db.execute(
        "SELECT kafka_partition, kafka_offset FROM bekreftelser_decoded"
    ).fetchall()
    bad = db.execute(
        "SELECT kafka_partition, kafka_offset, attempts FROM backup_undecodable"
    ).fetchall()
    assert len(good) == 1200 == len(set(good))
    assert sorted((p, o) for p, o, _ in bad) == [(0, 2000 + i) for i in range(5)]
    assert {a for *_, a in bad} == {1}  # listed once, by whichever decoder got there
    # What the two reports say they committed adds up to each row once.
    assert sum(r.decoded for r in reports) == 1200
    assert sum(r.undecodable for r in reports) == 5
