"""Migrations create the seed's schema, are idempotent, and adopt an existing database."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg

from backup_pipeline.backup.run import backup_topic
from backup_pipeline.migrate import VERSION_TABLE, current_revision, head_revision, migrate
from backup_pipeline.topics import spec_for_table
from backup_pipeline_tests.fix_services import make_settings
from dev.harness.waits import bounded

# The seed's DDL, column by column: (table, column) -> (type, nullable).
SEED_COLUMNS = {
    "bekreftelse_hendelser": {
        "version": ("smallint", "NO"),
        "kafka_partition": ("smallint", "NO"),
        "kafka_offset": ("bigint", "NO"),
        "record_key": ("bigint", "NO"),
        "arbeidssoeker_id": ("bigint", "NO"),
        "traceparent": ("character varying(58)", "YES"),
        "data": ("jsonb", "NO"),
    },
    "bekreftelser": {
        "version": ("smallint", "NO"),
        "kafka_partition": ("smallint", "NO"),
        "kafka_offset": ("bigint", "NO"),
        "record_key": ("bigint", "NO"),
        "traceparent": ("character varying(58)", "YES"),
        "data": ("bytea", "NO"),
    },
    "bekreftelse_paa_vegne_av": {
        "version": ("smallint", "NO"),
        "kafka_partition": ("smallint", "NO"),
        "kafka_offset": ("bigint", "NO"),
        "record_key": ("bigint", "NO"),
        "traceparent": ("character varying(58)", "YES"),
        "data": ("bytea", "NO"),
    },
    "bekreftelse_hwm": {
        "version": ("smallint", "NO"),
        "kafka_partition": ("smallint", "NO"),
        "kafka_offset": ("bigint", "NO"),
        "kafka_topic": ("character varying(255)", "NO"),
    },
}
SEED_PRIMARY_KEYS = {
    "bekreftelse_hendelser": ["version", "kafka_partition", "kafka_offset"],
    "bekreftelser": ["version", "kafka_partition", "kafka_offset"],
    "bekreftelse_paa_vegne_av": ["version", "kafka_partition", "kafka_offset"],
    "bekreftelse_hwm": ["version", "kafka_partition", "kafka_topic"],
}


def columns(conn: psycopg.Connection, table: str) -> dict[str, tuple[str, str]]:
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod),
               CASE WHEN a.attnotnull THEN 'NO' ELSE 'YES' END
        FROM pg_attribute a
        WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
        """,
        (table,),
    ).fetchall()
    return {name: (type_, nullable) for name, type_, nullable in rows}


def primary_key(conn: psycopg.Connection, table: str) -> list[str]:
    rows = conn.execute(
        """
        SELECT a.attname FROM pg_index i
        JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.ord
        """,
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def index_defs(conn: psycopg.Connection) -> dict[str, str]:
    return dict(
        conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        ).fetchall()
    )


def test_migrate_creates_the_seed_tables_with_the_seed_column_types(services, empty_database_url):
    settings = make_settings(services, empty_database_url)
    before, after = migrate(settings)
    assert before is None and after == head_revision()
    with psycopg.connect(empty_database_url) as conn:
        for table, expected in SEED_COLUMNS.items():
            actual = columns(conn, table)
            for column, type_and_null in expected.items():
                assert actual[column] == type_and_null, (table, column)
            # Anything beyond the seed's columns is additive and nullable.
            for column in set(actual) - set(expected):
                assert actual[column][1] == "YES", (table, column)
            assert primary_key(conn, table) == SEED_PRIMARY_KEYS[table]


def test_migrate_creates_the_seed_indexes(services, empty_database_url):
    migrate(make_settings(services, empty_database_url))
    with psycopg.connect(empty_database_url) as conn:
        indexes = index_defs(conn)
    assert "USING gin (data jsonb_path_ops)" in indexes["bekreftelse_hendelser_data_idx"]
    assert "btree (arbeidssoeker_id)" in indexes["bekreftelse_hendelser_arbeidssoeker_id_idx"]
    for table in ("bekreftelser", "bekreftelse_paa_vegne_av"):
        definition = indexes[f"{table}_data_idx"]
        assert "USING gin (data)" in definition
        # Partial, so a big value is stored instead of refused by the index.
        assert "octet_length(data) <= 2700" in definition


def test_a_value_too_big_for_the_seed_index_is_still_stored(services, database_url):
    with psycopg.connect(database_url) as conn:
        big = bytes(range(256)) * 40  # 10 KB, incompressible enough to break a full index
        conn.execute(
            "INSERT INTO bekreftelser (version, kafka_partition, kafka_offset, "
            "record_key, data) VALUES (1, 0, 0, 1, %s)",
            (big,),
        )
        stored = conn.execute("SELECT data FROM bekreftelser").fetchone()
        assert stored is not None and stored[0] == big


def test_migrate_is_idempotent(services, empty_database_url):
    settings = make_settings(services, empty_database_url)
    migrate(settings)
    with psycopg.connect(empty_database_url) as conn:
        first = index_defs(conn)
    before, after = migrate(settings)
    assert before == after == head_revision()
    with psycopg.connect(empty_database_url) as conn:
        assert index_defs(conn) == first
        assert conn.execute(f"SELECT count(*) FROM {VERSION_TABLE}").fetchone() == (1,)


SEED_DDL_AS_AN_EARLIER_IMPLEMENTATION_RAN_IT = """
CREATE EXTENSION IF NOT EXISTS btree_gin;
CREATE TABLE flyway_schema_history (installed_rank int PRIMARY KEY, version varchar(50));
INSERT INTO flyway_schema_history VALUES (1, '1');
CREATE TABLE bekreftelse_hendelser (version smallint NOT NULL, kafka_partition smallint
    NOT NULL, kafka_offset bigint NOT NULL, record_key bigint NOT NULL, arbeidssoeker_id
    bigint NOT NULL, traceparent varchar(58), data jsonb NOT NULL,
    primary key (version, kafka_partition, kafka_offset));
CREATE TABLE bekreftelser (version smallint NOT NULL, kafka_partition smallint NOT NULL,
    kafka_offset bigint NOT NULL, record_key bigint NOT NULL, traceparent varchar(58),
    data bytea NOT NULL, primary key (version, kafka_partition, kafka_offset));
CREATE TABLE bekreftelse_paa_vegne_av (version smallint NOT NULL, kafka_partition smallint
    NOT NULL, kafka_offset bigint NOT NULL, record_key bigint NOT NULL,
    traceparent varchar(58), data bytea NOT NULL,
    primary key (version, kafka_partition, kafka_offset));
CREATE TABLE bekreftelse_hwm (version smallint NOT NULL, kafka_partition smallint NOT NULL,
    kafka_offset bigint NOT NULL, kafka_topic varchar(255) NOT NULL,
    primary key (version, kafka_partition, kafka_topic));
CREATE INDEX bekreftelse_hendelser_data_idx ON bekreftelse_hendelser
    USING GIN (data jsonb_path_ops);
CREATE INDEX bekreftelse_hendelser_arbeidssoeker_id_idx ON bekreftelse_hendelser
    (arbeidssoeker_id);
CREATE INDEX bekreftelser_data_idx ON bekreftelser USING GIN (data bytea_ops);
CREATE INDEX bekreftelse_paa_vegne_av_data_idx ON bekreftelse_paa_vegne_av
    USING GIN (data bytea_ops);
"""


def test_migrate_adopts_an_existing_database_without_touching_a_row(
    services, empty_database_url, topic_names, producer
):
    topic = topic_names["bekreftelser"]
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(SEED_DDL_AS_AN_EARLIER_IMPLEMENTATION_RAN_IT)
        # The earlier implementation backed up offsets 0..2 of partition 0.
        for offset in range(3):
            conn.execute(
                "INSERT INTO bekreftelser VALUES (1, 0, %s, %s, 'tp', %s)",
                (offset, offset, b"old-%d" % offset),
            )
        conn.execute("INSERT INTO bekreftelse_hwm VALUES (1, 0, 2, %s)", (topic,))
        old_rows = conn.execute("SELECT * FROM bekreftelser ORDER BY kafka_offset").fetchall()
    for offset in range(5):
        producer.produce(
            topic, key=offset.to_bytes(8, "big"), value=b"new-%d" % offset, partition=0
        )
    producer.flush(10)

    settings = make_settings(services, empty_database_url, topic_names)
    before, after = migrate(settings)
    assert before is None and after == head_revision()
    assert current_revision(settings) == head_revision()

    with psycopg.connect(empty_database_url) as conn:
        assert (
            conn.execute(
                "SELECT version, kafka_partition, kafka_offset, record_key, "
                "traceparent, data FROM bekreftelser ORDER BY kafka_offset"
            ).fetchall()
            == old_rows
        )
        assert conn.execute("SELECT count(*) FROM flyway_schema_history").fetchone() == (1,)
        assert "octet_length" in index_defs(conn)["bekreftelser_data_idx"]

    with psycopg.connect(empty_database_url) as conn:
        # The adopted version serves; analysts' view shows it.
        assert conn.execute(
            "SELECT version, kafka_topic, state FROM backup_versions "
            "WHERE table_name = 'bekreftelser'"
        ).fetchall() == [(1, topic, "serving")]
        assert conn.execute("SELECT count(*) FROM bekreftelser_current").fetchone() == (3,)

    report = backup_topic(settings, spec_for_table("bekreftelser"))
    assert report.rows == 2  # offsets 3 and 4: carried on from the adopted HWM
    with psycopg.connect(empty_database_url) as conn:
        rows = conn.execute(
            "SELECT kafka_offset, data FROM bekreftelser "
            "WHERE kafka_partition = 0 ORDER BY kafka_offset"
        ).fetchall()
    assert [bytes(d) for _, d in rows] == [b"old-0", b"old-1", b"old-2", b"new-3", b"new-4"]


def test_concurrent_migrators_do_not_collide(services, empty_database_url):
    # Separate processes, as when three Dagster runs start at once.
    env = {
        **os.environ,
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": empty_database_url,
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "backup_pipeline.cli", "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=bounded(120)) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    assert current_revision(make_settings(services, empty_database_url)) == head_revision()


def test_migrate_records_the_versions_an_existing_database_holds(
    services, empty_database_url, topic_names
):
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute(SEED_DDL_AS_AN_EARLIER_IMPLEMENTATION_RAN_IT)
        for version in (1, 2, 3):
            conn.execute(
                "INSERT INTO bekreftelse_hwm VALUES (%s, 0, 5, %s)",
                (version, topic_names["bekreftelser"]),
            )
        conn.execute(
            "INSERT INTO bekreftelse_hwm VALUES (4, 0, 5, %s)",
            (topic_names["bekreftelse_hendelser"],),
        )
    migrate(make_settings(services, empty_database_url, topic_names))
    with psycopg.connect(empty_database_url) as conn:
        recorded = conn.execute(
            "SELECT table_name, version, kafka_topic, state FROM backup_versions ORDER BY 1, 2"
        ).fetchall()
        assert recorded == [
            # One version: it serves.
            ("bekreftelse_hendelser", 4, topic_names["bekreftelse_hendelser"], "serving"),
            # Several: the highest may not have caught up yet (only Kafka can tell), so
            # it is re-ingesting and the next one serves until reconcile promotes it.
            ("bekreftelser", 1, topic_names["bekreftelser"], "retired"),
            ("bekreftelser", 2, topic_names["bekreftelser"], "serving"),
            ("bekreftelser", 3, topic_names["bekreftelser"], "reingesting"),
        ]
        for table in ("bekreftelse_hendelser", "bekreftelser", "bekreftelse_paa_vegne_av"):
            conn.execute(f"SELECT * FROM {table}_current").fetchall()
        for table in ("backup_quarantine", "backup_gaps"):
            cols = columns(conn, table)
            assert cols["acknowledged_at"] == ("timestamp with time zone", "YES")
            assert cols["acknowledged_by"] == ("text", "YES")
            assert cols["acknowledged_note"] == ("text", "YES")
    # Running it again changes nothing.
    migrate(make_settings(services, empty_database_url, topic_names))
    with psycopg.connect(empty_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM backup_versions").fetchone() == (4,)
