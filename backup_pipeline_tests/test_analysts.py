"""DataFrames for analysts on a real, migrated PostgreSQL: the serving version's records,
typed, a time window or a set of ids, read in chunks through a server-side cursor."""

from __future__ import annotations

import json
import random
import re
import uuid
from collections.abc import Generator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pandas as pd
import psycopg
import pytest

from backup_pipeline import analysts
from backup_pipeline.analysts import Readable
from backup_pipeline.decode.catalog import BEKREFTELSER, PAA_VEGNE_AV
from backup_pipeline.demo.data import avro_record
from backup_pipeline_tests.test_decode import framed, run, store_raw

T0 = datetime(2025, 3, 1, tzinfo=UTC)
PERIODS = [uuid.UUID(int=i + 1) for i in range(4)]


def insert_events(conn: psycopg.Connection, count: int, *, version: int = 1) -> None:
    """``count`` events an hour apart from T0, alternating both instant shapes."""
    for i in range(count):
        when = T0 + timedelta(hours=i)
        instant = (
            json.dumps(when.isoformat().replace("+00:00", "Z"))
            if i % 2
            else f"{int(when.timestamp())}.000000000"
        )
        text = (
            f'{{"hendelseId":"{uuid.uuid4()}","periodeId":"{PERIODS[i % 4]}",'
            f'"arbeidssoekerId":{i},"hendelseTidspunkt":{instant},'
            f'"hendelseType":"bekreftelse.tilgjengelig","gjenstaandeTid":"PT1H"}}'
        )
        conn.execute(
            "INSERT INTO bekreftelse_hendelser (version, kafka_partition, kafka_offset,"
            " record_key, arbeidssoeker_id, data) VALUES (%s, %s, %s, 1, %s, %s::jsonb)",
            (version, i % 3, i, i, text),
        )


def serve(conn: psycopg.Connection, table: str, serving: int, others: dict[int, str]) -> None:
    conn.execute("DELETE FROM backup_versions WHERE table_name = %s", (table,))
    for version, state in {serving: "serving", **others}.items():
        conn.execute(
            "INSERT INTO backup_versions (table_name, version, kafka_topic, state)"
            " VALUES (%s, %s, 't', %s)",
            (table, version, state),
        )


def test_a_time_window_of_the_serving_version_with_proper_dtypes(db):
    insert_events(db, 10)
    insert_events(db, 3, version=2)  # a re-ingestion that does not serve yet
    serve(db, "bekreftelse_hendelser", 1, {2: "reingesting"})
    frame = analysts.read_frame(
        db,
        "bekreftelse_hendelser_typed",
        start=T0 + timedelta(hours=2),
        end=T0 + timedelta(hours=7),
    )
    assert list(frame["hendelse_tidspunkt"]) == [T0 + timedelta(hours=h) for h in range(2, 7)]
    assert set(frame["version"]) == {1}
    dtypes = frame.dtypes.astype(str).to_dict()
    assert dtypes["hendelse_tidspunkt"] == "datetime64[us, UTC]"
    assert dtypes["version"] == "Int16" and dtypes["kafka_offset"] == "Int64"
    assert dtypes["known_event_type"] == "boolean"
    assert dtypes["hendelse_id"] == "string" and dtypes["hendelse_type"] == "string"
    assert dtypes["gjenstaaende_tid"] == "timedelta64[us]"
    assert frame["gjenstaaende_tid"].iloc[0] == pd.Timedelta(hours=1)
    assert frame["leveringsfrist"].isna().all()  # NULL is NaT, still datetime64
    assert dtypes["leveringsfrist"] == "datetime64[us, UTC]"
    assert isinstance(frame["data"].iloc[0], dict)


def test_the_serving_version_is_followed_and_a_version_can_be_asked_for(db):
    insert_events(db, 4)
    insert_events(db, 6, version=2)
    serve(db, "bekreftelse_hendelser", 2, {1: "retired"})
    assert len(analysts.read_frame(db, "bekreftelse_hendelser_typed")) == 6
    assert set(analysts.read_frame(db, "bekreftelse_hendelser_typed", version=1)["version"]) == {1}


def test_a_set_of_ids_and_chosen_columns(db):
    insert_events(db, 12)
    serve(db, "bekreftelse_hendelser", 1, {})
    frame = analysts.read_frame(
        db,
        "bekreftelse_hendelser_typed_current",
        ids=[PERIODS[1], str(PERIODS[2])],
        columns=["periode_id", "hendelse_tidspunkt"],
    )
    assert list(frame.columns) == ["periode_id", "hendelse_tidspunkt"]
    assert sorted(set(frame["periode_id"])) == sorted({str(PERIODS[1]), str(PERIODS[2])})
    assert len(frame) == 6


def test_chunks_come_from_a_server_side_cursor_a_chunk_at_a_time(db):
    insert_events(db, 25)
    serve(db, "bekreftelse_hendelser", 1, {})
    chunks = analysts.read_chunks(db, "bekreftelse_hendelser_typed", chunk_rows=7)
    first = next(chunks)
    # While the caller holds the first chunk, the rest waits on the server in a cursor.
    open_cursors = db.execute("SELECT count(*) FROM pg_cursors WHERE name LIKE 'analysts_%'")
    assert open_cursors.fetchone() == (1,)
    sizes = [len(first), *(len(c) for c in chunks)]
    assert sizes == [7, 7, 7, 4]
    assert db.execute("SELECT count(*) FROM pg_cursors").fetchone() == (0,)
    assert db.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_an_abandoned_iteration_closes_its_cursor_and_transaction(db):
    insert_events(db, 10)
    serve(db, "bekreftelse_hendelser", 1, {})
    chunks = cast(
        Generator[Any], analysts.read_chunks(db, "bekreftelse_hendelser_typed", chunk_rows=3)
    )
    next(chunks)
    chunks.close()
    assert db.execute("SELECT count(*) FROM pg_cursors").fetchone() == (0,)
    assert db.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_an_empty_window_is_an_empty_but_typed_frame(db):
    serve(db, "bekreftelse_hendelser", 1, {})
    frame = analysts.read_frame(db, "bekreftelse_hendelser_typed", start=T0, end=T0)
    assert frame.empty
    assert str(frame.dtypes["hendelse_tidspunkt"]) == "datetime64[us, UTC]"
    assert list(analysts.read_chunks(db, "bekreftelse_hendelser_typed")) == []


def test_naive_times_and_unknown_relations_are_refused(db):
    with pytest.raises(ValueError, match="timezone-aware"):
        analysts.read_frame(db, "bekreftelse_hendelser_typed", start=datetime(2025, 1, 1))
    with pytest.raises(KeyError, match="known: "):
        analysts.read_frame(db, "no_such_view")


def test_a_new_relation_needs_only_a_registry_entry(db):
    """Stands in for a decoded Avro table (docs/decoded-tables.md): a relation without a
    time of its own gets its rows' Kafka timestamps from the raw table."""
    db.execute(
        """
        CREATE TABLE handmade_decoded (
            version smallint, kafka_partition smallint, kafka_offset bigint,
            periode_id uuid, handling text, interval_ms bigint, frist_brutt boolean,
            PRIMARY KEY (version, kafka_partition, kafka_offset));
        CREATE VIEW handmade_decoded_current AS SELECT d.* FROM handmade_decoded d
            WHERE d.version = (SELECT version FROM backup_versions
                               WHERE table_name = 'bekreftelse_paa_vegne_av' AND state = 'serving');
        """
    )
    for offset in range(6):
        db.execute(
            "INSERT INTO bekreftelse_paa_vegne_av (version, kafka_partition, kafka_offset,"
            " record_key, data, kafka_timestamp) VALUES (1, 0, %s, 1, '\\x00', %s)",
            (offset, T0 + timedelta(days=offset)),
        )
        db.execute(
            "INSERT INTO handmade_decoded VALUES (1, 0, %s, %s, %s, %s, %s)",
            (
                offset,
                PERIODS[offset % 2],
                "Start" if offset < 4 else "Stopp",
                86_400_000 if offset < 4 else None,
                None if offset < 4 else False,
            ),
        )
    serve(db, "bekreftelse_paa_vegne_av", 1, {})
    entry = Readable(
        "handmade_decoded",
        "bekreftelse_paa_vegne_av",
        "kafka_timestamp",
        "periode_id",
        time_from_raw=True,
    )
    frame = analysts.read_frame(
        db, entry, start=T0 + timedelta(days=1), end=T0 + timedelta(days=5), ids=[PERIODS[1]]
    )
    assert list(frame["kafka_offset"]) == [1, 3]
    assert list(frame["kafka_timestamp"]) == [T0 + timedelta(days=1), T0 + timedelta(days=3)]
    assert str(frame.dtypes["interval_ms"]) == "Int64"
    assert str(frame.dtypes["frist_brutt"]) == "boolean"
    assert frame["frist_brutt"].isna().all()


def test_pandas_is_imported_by_the_analysts_module_only():
    package = Path(analysts.__file__).parent
    importers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if re.search(r"^\s*(import pandas|from pandas)", path.read_text(), re.MULTILINE)
    )
    assert importers == ["analysts.py"]


def test_the_decoded_avro_tables_read_as_frames_with_typed_columns(db, database_url):
    """The registry's decoded entries against the real decoded tables (migration 0006),
    filled by a real decode pass: a window on the record's own time, and one on the raw
    table's Kafka timestamp for the table that has no time of its own."""
    rng = random.Random(7)
    confirmations = [avro_record(rng, "bekreftelser") for _ in range(4)]
    store_raw(db, BEKREFTELSER, [framed(101, "bekreftelse-v1.avsc", r) for r in confirmations])
    on_behalf = [avro_record(rng, "bekreftelse_paa_vegne_av") for _ in range(3)]
    store_raw(db, PAA_VEGNE_AV, [framed(202, "paavegneav-v1.avsc", r) for r in on_behalf])
    db.execute("UPDATE bekreftelse_paa_vegne_av SET kafka_timestamp = %s", (T0,))
    for table in (BEKREFTELSER, PAA_VEGNE_AV):
        run(database_url, table)
        serve(db, table.raw_table, 1, {})

    frame = analysts.read_frame(db, "bekreftelser_decoded", start=datetime(2000, 1, 1, tzinfo=UTC))
    assert len(frame) == 4
    dtypes = frame.dtypes.astype(str).to_dict()
    assert dtypes["svar_sendt_inn_av_tidspunkt"] == "datetime64[us, UTC]"
    assert dtypes["vil_fortsette_som_arbeidssoeker"] == "boolean"
    assert list(frame["vil_fortsette_som_arbeidssoeker"]) == [
        r["svar"]["vilFortsetteSomArbeidssoeker"] for r in confirmations
    ]

    frame = analysts.read_frame(
        db, "bekreftelse_paa_vegne_av_decoded", start=T0, end=T0 + timedelta(seconds=1)
    )
    assert len(frame) == 3
    assert set(frame["handling"]) <= {"Start", "Stopp"}
    assert str(frame["kafka_timestamp"].dtype) == "datetime64[us, UTC]"
