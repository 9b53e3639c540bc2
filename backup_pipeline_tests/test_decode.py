"""Decoded Avro tables: every writer version and union branch round-trips into typed rows,
schemas are kept in PostgreSQL, undecodable values are listed and decode once their schema
is known, versions are kept apart. The registry is in test_decode_registry.py; killed
passes, Dagster and Kafka in test_decode_runs.py (both use the helpers here)."""

from __future__ import annotations

import io
import json
import random
import struct
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from fastavro import parse_schema, schemaless_writer

from backup_pipeline.decode.catalog import AVRO_TABLES, BEKREFTELSER, PAA_VEGNE_AV, AvroTable
from backup_pipeline.decode.decoder import vendored_text
from backup_pipeline.decode.pass_ import decode_pass
from backup_pipeline.decode.resolver import Resolver
from backup_pipeline.decode.undecodable import acknowledge, status
from backup_pipeline.demo.data import avro_record

TOPIC = {BEKREFTELSER.raw_table: "t-bekreftelser", PAA_VEGNE_AV.raw_table: "t-paavegneav"}


def framed(schema_id: int, schema: dict[str, Any] | str, record: dict[str, Any]) -> bytes:
    parsed = parse_schema(json.loads(vendored_text(schema)) if isinstance(schema, str) else schema)
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", schema_id))
    schemaless_writer(buf, parsed, record)
    return buf.getvalue()


def store_raw(
    db: psycopg.Connection,
    table: AvroTable,
    values: list[bytes],
    *,
    version: int = 1,
    partition: int = 0,
    first_offset: int = 0,
) -> list[int]:
    """Raw rows as the backup writes them (and the HWM row that names the partition)."""
    offsets = [first_offset + 2 * i for i in range(len(values))]  # gaps, as in real topics
    with db.cursor() as cur:
        cur.executemany(
            f"INSERT INTO {table.raw_table} (version, kafka_partition, kafka_offset, "
            "record_key, data) VALUES (%s, %s, %s, 1, %s)",
            [(version, partition, o, v) for o, v in zip(offsets, values, strict=True)],
        )
        cur.execute(
            "INSERT INTO bekreftelse_hwm (version, kafka_partition, kafka_offset, kafka_topic) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (version, kafka_partition, kafka_topic) "
            "DO UPDATE SET kafka_offset = EXCLUDED.kafka_offset",
            (version, partition, offsets[-1], TOPIC[table.raw_table]),
        )
    return offsets


def run(database_url: str, table: AvroTable, resolver: Resolver | None = None, **kw: Any) -> Any:
    with psycopg.connect(database_url) as conn:
        return decode_pass(
            conn, table, TOPIC[table.raw_table], resolver or Resolver(), batch_size=7, **kw
        )


def decoded(db: psycopg.Connection, table: AvroTable, where: str = "true") -> list[dict[str, Any]]:
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        return cur.execute(
            f"SELECT * FROM {table.decoded_table} WHERE {where} "
            "ORDER BY version, kafka_partition, kafka_offset"
        ).fetchall()


def undecodable(db: psycopg.Connection, table: AvroTable) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT kafka_offset, schema_id, reason_kind, reason, resolved_at IS NOT NULL "
        "FROM backup_undecodable WHERE table_name = %s ORDER BY kafka_offset",
        (table.raw_table,),
    ).fetchall()


# ----------------------------------------------------------------- round trips ----


def test_both_bekreftelse_writer_versions_decode_to_typed_columns_and_keep_their_schemas(
    db, database_url
):
    rng = random.Random(3)
    new = avro_record(rng, "bekreftelser")
    new["svar"]["sendtInnAv"]["utfoertAv"]["sikkerhetsnivaa"] = "tokenx:Level4"
    old = avro_record(rng, "bekreftelser", old=True)
    store_raw(
        db,
        BEKREFTELSER,
        [
            framed(101, "bekreftelse-v1.avsc", new),
            framed(100, "bekreftelse-pre-2025-03-07.avsc", old),
        ],
    )

    report = run(database_url, BEKREFTELSER)

    assert (report.decoded, report.undecodable) == (2, 0)
    rows = decoded(db, BEKREFTELSER)
    assert [r["schema_id"] for r in rows] == [101, 100]
    first, second = rows
    assert first["periode_id"] == uuid.UUID(new["periodeId"])
    assert first["bekreftelse_id"] == uuid.UUID(new["id"])
    assert first["bekreftelsesloesning"] == new["bekreftelsesloesning"]
    assert first["bruker_type"] == "SLUTTBRUKER"
    assert first["bruker_id"] == new["svar"]["sendtInnAv"]["utfoertAv"]["id"]
    assert first["bruker_sikkerhetsnivaa"] == "tokenx:Level4"
    millis = new["svar"]["gjelderFra"]
    assert first["gjelder_fra"] == datetime.fromtimestamp(millis / 1000, UTC)
    assert first["svar_sendt_inn_av_tidspunkt"].tzinfo is not None
    assert first["har_jobbet_i_denne_perioden"] is new["svar"]["harJobbetIDennePerioden"]
    assert first["vil_fortsette_som_arbeidssoeker"] is new["svar"]["vilFortsetteSomArbeidssoeker"]
    # The old writer had no sikkerhetsnivaa: NULL, not a default.
    assert second["bruker_sikkerhetsnivaa"] is None
    assert second["bekreftelse_id"] == uuid.UUID(old["id"])
    # Both writer schemas are now part of the backup, with where they came from.
    schemas = db.execute(
        "SELECT schema_id, source, record_name, schema_json FROM backup_schemas ORDER BY 1"
    ).fetchall()
    assert [(s[0], s[1], s[2]) for s in schemas] == [
        (100, "vendored:bekreftelse-pre-2025-03-07.avsc", BEKREFTELSER.record_name),
        (101, "vendored:bekreftelse-v1.avsc", BEKREFTELSER.record_name),
    ]
    assert schemas[0][3] == vendored_text("bekreftelse-pre-2025-03-07.avsc")


def test_paa_vegne_av_start_and_both_stopp_layouts_decode(db, database_url):
    rng = random.Random(4)
    start = avro_record(rng, "bekreftelse_paa_vegne_av")
    start["handling"] = (
        "no.nav.paw.bekreftelse.paavegneav.v1.vo.Start",
        {"intervalMS": 1209600000, "graceMS": 604800000},
    )
    stopp = dict(
        start, handling=("no.nav.paw.bekreftelse.paavegneav.v1.vo.Stopp", {"fristBrutt": True})
    )
    old_start = dict(start)
    old_stopp = dict(start, handling=("no.nav.paw.bekreftelse.paavegneav.v1.vo.Stopp", {}))
    old = "paavegneav-pre-2025-03-26.avsc"
    store_raw(
        db,
        PAA_VEGNE_AV,
        [
            framed(202, "paavegneav-v1.avsc", start),
            framed(202, "paavegneav-v1.avsc", stopp),
            # id 201 is first met as a Start, which both layouts read alike...
            framed(201, old, old_start),
            # ...then as an old, empty Stopp, which only the old layout reads.
            framed(201, old, old_stopp),
        ],
    )

    report = run(database_url, PAA_VEGNE_AV)

    assert (report.decoded, report.undecodable) == (4, 0)
    got = [
        (r["schema_id"], r["handling"], r["interval_ms"], r["grace_ms"], r["frist_brutt"])
        for r in decoded(db, PAA_VEGNE_AV)
    ]
    assert got == [
        (202, "Start", 1209600000, 604800000, None),
        (202, "Stopp", None, None, True),
        (201, "Start", 1209600000, 604800000, None),
        (201, "Stopp", None, None, None),  # the old Stopp said nothing about fristBrutt
    ]
    sources = dict(db.execute("SELECT schema_id, source FROM backup_schemas").fetchall())
    assert sources == {202: "vendored:paavegneav-v1.avsc", 201: f"vendored:{old}"}


# ------------------------------------------------------------ undecodable rows ----


def test_undecodable_values_are_listed_with_reason_counted_and_checked(db, database_url):
    rng = random.Random(5)
    good = framed(101, "bekreftelse-v1.avsc", avro_record(rng, "bekreftelser"))
    garbage_body = b"\x00" + struct.pack(">I", 777) + b"\xff\xfe\xfd"
    offsets = store_raw(db, BEKREFTELSER, [b"", b"{json}", good, garbage_body, good + b"\x00"])

    report = run(database_url, BEKREFTELSER)

    assert (report.decoded, report.undecodable) == (1, 4)
    listed = undecodable(db, BEKREFTELSER)
    assert [(o, s, k) for o, s, k, _, _ in listed] == [
        (offsets[0], None, "not_framed"),
        (offsets[1], None, "not_framed"),
        (offsets[3], 777, "unknown_schema"),
        (offsets[4], 101, "does_not_fit"),
    ]
    assert "left over" in listed[3][3]
    st = status(db, BEKREFTELSER)
    assert (st.decoded_rows, st.open_undecodable, st.unacknowledged) == (1, 4, 4)
    assert st.by_kind == {"not_framed": 2, "unknown_schema": 1, "does_not_fit": 1}
    assert st.schema_ids == [101, 777]
    # Reviewed rows stop counting against the check, and the watermark moved past all.
    last_id = db.execute("SELECT max(id) FROM backup_undecodable").fetchone()[0]
    db.autocommit = False
    assert acknowledge(db, BEKREFTELSER, last_id, "analyst", "test values") == 4
    db.autocommit = True
    assert status(db, BEKREFTELSER).unacknowledged == 0
    assert run(database_url, BEKREFTELSER).raw_rows == 0


def test_an_enum_symbol_outside_the_known_ones_is_undecodable_not_mapped_to_a_default(
    db, database_url, monkeypatch
):
    schema = json.loads(vendored_text("paavegneav-v1.avsc"))
    schema["fields"][1]["type"]["symbols"].append("NY_LOESNING")
    record = avro_record(random.Random(6), "bekreftelse_paa_vegne_av")
    record["bekreftelsesloesning"] = "NY_LOESNING"
    # A registry-resolved writer schema with a newer symbol, kept as such.
    db.execute(
        "INSERT INTO backup_schemas (schema_id, schema_json, record_name, source) "
        "VALUES (300, %s, %s, 'registry')",
        (json.dumps(schema), PAA_VEGNE_AV.record_name),
    )
    store_raw(db, PAA_VEGNE_AV, [framed(300, schema, record)])

    report = run(database_url, PAA_VEGNE_AV)

    assert (report.decoded, report.undecodable) == (0, 1)
    [(_, schema_id, kind, reason, _)] = undecodable(db, PAA_VEGNE_AV)
    assert (schema_id, kind) == (300, "unknown_enum_symbol")
    assert "NY_LOESNING" in reason
    # An ordinary pass leaves it listed; a release that knows the symbol decodes it with
    # `decode --retry-undecodable`.
    assert run(database_url, PAA_VEGNE_AV).redecoded == 0
    name = "no.nav.paw.bekreftelse.paavegneav.v1.vo.Bekreftelsesloesning"
    monkeypatch.setitem(PAA_VEGNE_AV.enums, name, (*PAA_VEGNE_AV.enums[name], "NY_LOESNING"))
    assert run(database_url, PAA_VEGNE_AV, retry_all=True).redecoded == 1
    [row] = decoded(db, PAA_VEGNE_AV)
    assert row["bekreftelsesloesning"] == "NY_LOESNING"


def test_rows_of_an_unknown_id_decode_once_a_schema_for_it_is_kept(db, database_url):
    record = avro_record(random.Random(8), "bekreftelser")
    # Written with a schema no vendored file matches (an extra trailing field).
    schema = json.loads(vendored_text("bekreftelse-v1.avsc"))
    schema["fields"].append({"name": "ekstra", "type": "string", "default": ""})
    value = framed(555, schema, dict(record, ekstra="x"))
    store_raw(db, BEKREFTELSER, [value, value])
    run(database_url, BEKREFTELSER)
    assert [k for _, _, k, _, _ in undecodable(db, BEKREFTELSER)] == ["unknown_schema"] * 2

    # Someone supplies the schema (as the registry would): the next pass decodes the rows.
    db.execute(
        "INSERT INTO backup_schemas (schema_id, schema_json, record_name, source) "
        "VALUES (555, %s, %s, 'registry')",
        (json.dumps(schema), BEKREFTELSER.record_name),
    )
    report = run(database_url, BEKREFTELSER)

    assert report.redecoded == 2
    assert len(decoded(db, BEKREFTELSER)) == 2
    assert [resolved for *_, resolved in undecodable(db, BEKREFTELSER)] == [True, True]
    assert status(db, BEKREFTELSER).unacknowledged == 0


# ----------------------------------------------------- versions and the views ----


def test_each_version_decodes_apart_and_the_current_view_follows_the_serving_one(db, database_url):
    rng = random.Random(11)
    v1 = [framed(101, "bekreftelse-v1.avsc", avro_record(rng, "bekreftelser")) for _ in range(3)]
    v2 = [framed(101, "bekreftelse-v1.avsc", avro_record(rng, "bekreftelser")) for _ in range(5)]
    store_raw(db, BEKREFTELSER, v1, version=1)
    db.execute(
        "INSERT INTO backup_versions (table_name, version, kafka_topic, state) VALUES "
        "('bekreftelser', 1, %s, 'serving')",
        (TOPIC["bekreftelser"],),
    )
    run(database_url, BEKREFTELSER)
    # A new version's raw rows arrive: its decoded rows fill as they do.
    store_raw(db, BEKREFTELSER, v2, version=2, partition=1)
    db.execute(
        "INSERT INTO backup_versions (table_name, version, kafka_topic, state) VALUES "
        "('bekreftelser', 2, %s, 'reingesting')",
        (TOPIC["bekreftelser"],),
    )
    run(database_url, BEKREFTELSER)

    count = "SELECT version, count(*) FROM {} GROUP BY version ORDER BY version"
    assert db.execute(count.format("bekreftelser_decoded")).fetchall() == [(1, 3), (2, 5)]
    assert db.execute(count.format("bekreftelser_decoded_current")).fetchall() == [(1, 3)]
    db.execute("UPDATE backup_versions SET state = 'retired' WHERE version = 1")
    db.execute("UPDATE backup_versions SET state = 'serving' WHERE version = 2")
    assert db.execute(count.format("bekreftelser_decoded_current")).fetchall() == [(2, 5)]


def test_the_database_comments_are_the_catalog_descriptions(db):
    for table in AVRO_TABLES:
        for relation in (table.decoded_table, table.current_view):
            comments = dict(
                db.execute(
                    "SELECT a.attname, col_description(a.attrelid, a.attnum) "
                    "FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0",
                    (relation,),
                ).fetchall()
            )
            assert comments == {c.name: c.description for c in table.columns}
            assert db.execute("SELECT obj_description(%s::regclass)", (relation,)).fetchone()[0]
