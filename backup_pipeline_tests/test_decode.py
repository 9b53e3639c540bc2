"""Decoded Avro tables: every writer version and union branch round-trips into typed rows,
schemas are kept in PostgreSQL, undecodable values are listed and decode once their schema
is known, a killed decode pass loses and duplicates nothing, versions are kept apart."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from fastavro import parse_schema, schemaless_writer

from backup_pipeline.decode.catalog import AVRO_TABLES, BEKREFTELSER, PAA_VEGNE_AV, AvroTable
from backup_pipeline.decode.decoder import vendored_text
from backup_pipeline.decode.pass_ import acknowledge, decode_pass, status
from backup_pipeline.decode.resolver import RegistryClient, Resolver
from backup_pipeline.demo.data import SCHEMA_IDS, avro_record
from dev.harness.waits import bounded

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


# ------------------------------------------------------------------- registry ----


class FakeRegistry:
    """A minimal Confluent REST schema registry: GET /schemas/ids/{id}, basic auth."""

    def __init__(self, schemas: dict[int, str], user: str, password: str) -> None:
        self.schemas = schemas
        self.requests = 0
        self.delay = threading.Event()  # set: answer only after the client gave up
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if outer.delay.is_set():
                    threading.Event().wait(1.5)  # far past the client's timeout
                if self.headers.get("Authorization") != expected:
                    return self._send(401, {"error_code": 401, "message": "Unauthorized"})
                prefix = "/schemas/ids/"
                if not self.path.startswith(prefix):
                    return self._send(404, {"error_code": 404, "message": "HTTP 404"})
                schema = outer.schemas.get(int(self.path[len(prefix) :]))
                if schema is None:
                    return self._send(404, {"error_code": 40403, "message": "Schema not found"})
                return self._send(200, {"schema": schema})

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the slow-registry test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def registry_schema() -> dict[str, Any]:
    schema = json.loads(vendored_text("bekreftelse-v1.avsc"))
    schema["fields"].append({"name": "fraRegistry", "type": "int", "default": 0})
    return schema


@pytest.fixture
def registry(registry_schema: dict[str, Any]) -> Iterator[FakeRegistry]:
    server = FakeRegistry({42: json.dumps(registry_schema)}, "reg-user", "reg-secret")
    yield server
    server.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_values_decode_with_the_registry_schema_and_keep_it(
    db, database_url, registry, registry_schema
):
    value = framed(
        42, registry_schema, dict(avro_record(random.Random(9), "bekreftelser"), fraRegistry=7)
    )
    store_raw(db, BEKREFTELSER, [value] * 3)
    client = RegistryClient(
        f"http://127.0.0.1:{registry.port}", user="reg-user", password="reg-secret"
    )

    report = run(database_url, BEKREFTELSER, Resolver(registry=client))

    assert (report.decoded, report.undecodable) == (3, 0)
    assert registry.requests == 1  # once per id, not per row
    [(source, text)] = db.execute("SELECT source, schema_json FROM backup_schemas").fetchall()
    assert (source, json.loads(text)) == ("registry", registry_schema)


def test_a_registry_that_is_down_leaves_rows_pending_and_they_decode_when_it_is_back(
    db, database_url, registry, registry_schema
):
    value = framed(
        42, registry_schema, dict(avro_record(random.Random(10), "bekreftelser"), fraRegistry=1)
    )
    port = registry.port
    registry.stop()  # down: connection refused
    store_raw(db, BEKREFTELSER, [value] * 4)
    clock = Clock()
    resolver = Resolver(
        registry=RegistryClient(
            f"http://127.0.0.1:{port}", user="reg-user", password="reg-secret", timeout=2
        ),
        clock=clock,
    )

    report = run(database_url, BEKREFTELSER, resolver)

    # The pass went on past them: the watermark is at the end, the rows are listed.
    assert (report.decoded, report.undecodable, report.raw_rows) == (0, 4, 4)
    assert {k for _, _, k, _, _ in undecodable(db, BEKREFTELSER)} == {"schema_pending"}
    assert db.execute("SELECT count(*) FROM backup_schemas").fetchone()[0] == 0

    back = FakeRegistry(registry.schemas, "reg-user", "reg-secret")
    try:
        resolver.registry = RegistryClient(
            f"http://127.0.0.1:{back.port}", user="reg-user", password="reg-secret"
        )
        # Within the backoff the registry is not asked again...
        assert run(database_url, BEKREFTELSER, resolver).redecoded == 0
        assert back.requests == 0
        # ...after it, the waiting rows decode on the next pass by themselves.
        clock.now += 10
        report = run(database_url, BEKREFTELSER, resolver)
    finally:
        back.stop()
    assert report.redecoded == 4
    assert len(decoded(db, BEKREFTELSER)) == 4
    assert status(db, BEKREFTELSER).open_undecodable == 0


def test_a_slow_registry_costs_one_timeout_per_id_not_per_row(
    db, database_url, registry, registry_schema
):
    value = framed(
        42, registry_schema, dict(avro_record(random.Random(15), "bekreftelser"), fraRegistry=1)
    )
    store_raw(db, BEKREFTELSER, [value] * 5)
    registry.delay.set()
    client = RegistryClient(
        f"http://127.0.0.1:{registry.port}", user="reg-user", password="reg-secret", timeout=0.3
    )

    report = run(database_url, BEKREFTELSER, Resolver(registry=client, clock=Clock()))

    assert (report.decoded, report.undecodable, report.raw_rows) == (0, 5, 5)
    assert registry.requests == 1
    assert {k for _, _, k, _, _ in undecodable(db, BEKREFTELSER)} == {"schema_pending"}


def test_a_registry_answering_nonsense_leaves_the_id_pending(db, database_url, registry):
    registry.schemas[42] = "{not json"
    store_raw(db, BEKREFTELSER, [b"\x00" + struct.pack(">I", 42) + b"\x02"])
    client = RegistryClient(
        f"http://127.0.0.1:{registry.port}", user="reg-user", password="reg-secret"
    )
    run(database_url, BEKREFTELSER, Resolver(registry=client))
    assert [k for _, _, k, _, _ in undecodable(db, BEKREFTELSER)] == ["schema_pending"]


def test_wrong_registry_credentials_never_show_the_password(db, database_url, registry):
    store_raw(db, BEKREFTELSER, [b"\x00" + struct.pack(">I", 42) + b"\x02"])
    client = RegistryClient(
        f"http://127.0.0.1:{registry.port}", user="reg-user", password="hunter2"
    )
    run(database_url, BEKREFTELSER, Resolver(registry=client))
    [(_, _, kind, reason, _)] = undecodable(db, BEKREFTELSER)
    assert kind == "schema_pending" and "401" in reason and "hunter2" not in reason


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


# ---------------------------------------------------------------- kill -9 ----


def test_decode_passes_killed_at_any_point_decode_every_row_exactly_once(
    db, database_url, services
):
    rng = random.Random(12)
    values = [
        framed(101, "bekreftelse-v1.avsc", avro_record(rng, "bekreftelser")) for _ in range(300)
    ] + [b"broken"] * 20
    rng.shuffle(values)
    store_raw(db, BEKREFTELSER, values[:160], partition=0)
    store_raw(db, BEKREFTELSER, values[160:], partition=1)
    env = {
        **os.environ,
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": database_url,
        "KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_TOPIC": TOPIC["bekreftelser"],
        "BACKUP_DECODE_BATCH_SIZE": "25",
    }
    command = [
        sys.executable,
        "-m",
        "backup_pipeline.cli",
        "decode",
        "--table",
        "bekreftelser",
        "--no-migrate",
    ]
    for failpoint in (
        "decode_after_copy:1",
        "decode_before_commit:2",
        "decode_after_copy:5",
        "decode_before_commit:9",
    ):
        proc = subprocess.run(
            command,
            env={**env, "BACKUP_PIPELINE_FAILPOINT": failpoint},
            capture_output=True,
            timeout=bounded(120),
        )
        assert proc.returncode == -signal.SIGKILL, (failpoint, proc.stderr.decode())
    final = subprocess.run(command, env=env, capture_output=True, timeout=bounded(120))
    assert final.returncode == 0, final.stderr.decode()

    raw = set(db.execute("SELECT kafka_partition, kafka_offset FROM bekreftelser").fetchall())
    good = db.execute("SELECT kafka_partition, kafka_offset FROM bekreftelser_decoded").fetchall()
    bad = db.execute(
        "SELECT kafka_partition, kafka_offset, attempts FROM backup_undecodable"
    ).fetchall()
    assert len(good) == 300 and len(bad) == 20
    assert set(good) | {(p, o) for p, o, _ in bad} == raw
    assert not set(good) & {(p, o) for p, o, _ in bad}
    assert {a for *_, a in bad} == {1}  # a killed batch listed nothing for good
    assert dict(
        db.execute(
            "SELECT kafka_partition, kafka_offset FROM backup_decode_hwm "
            "WHERE table_name = 'bekreftelser'"
        ).fetchall()
    ) == {0: 2 * 159, 1: 2 * 159}
    assert SCHEMA_IDS["bekreftelser"][0] == 101


# -------------------------------------------------------------------- Dagster ----


def test_the_decoded_assets_report_rows_undecodables_schema_ids_and_fail_their_check(
    db, database_url, services, monkeypatch
):
    import dagster as dg

    from backup_pipeline.orchestration.decoded import CHECK, decoded_avro, decoded_checks
    from backup_pipeline.orchestration.resources import BackupEngine

    for name, value in {
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": database_url,
        "KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_TOPIC": TOPIC["bekreftelser"],
        "KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_PAAVEGNEAV_TOPIC": TOPIC["bekreftelse_paa_vegne_av"],
    }.items():
        monkeypatch.setenv(name, value)
    rng = random.Random(13)
    store_raw(
        db,
        BEKREFTELSER,
        [framed(101, "bekreftelse-v1.avsc", avro_record(rng, "bekreftelser")) for _ in range(4)]
        + [b"not avro"],
    )
    store_raw(
        db,
        PAA_VEGNE_AV,
        [framed(202, "paavegneav-v1.avsc", avro_record(rng, "bekreftelse_paa_vegne_av"))],
    )

    result = dg.materialize([decoded_avro, decoded_checks], resources={"engine": BackupEngine()})

    assert result.success
    events = {
        m.asset_key.to_user_string(): m.metadata
        for m in result.get_asset_materialization_events()
        for m in [m.materialization]
    }
    bek = events["bekreftelser_decoded"]
    assert bek["dagster/row_count"].value == 4
    assert bek["undecodable"].value == 1
    assert bek["schema_ids_seen"].value == "101"
    assert events["bekreftelse_paa_vegne_av_decoded"]["dagster/row_count"].value == 1
    checks = {
        e.asset_key.to_user_string(): e.passed
        for e in result.get_asset_check_evaluations()
        if e.check_name == CHECK
    }
    assert checks == {"bekreftelser_decoded": False, "bekreftelse_paa_vegne_av_decoded": True}
    # The lineage an analyst reads: every decoded column back to the raw data column.
    spec = next(s for s in decoded_avro.specs if s.key.to_user_string() == "bekreftelser_decoded")
    lineage = spec.metadata["dagster/column_lineage"].deps_by_column
    assert [d.column_name for d in lineage["vil_fortsette_som_arbeidssoeker"]] == ["data"]
    assert [d.asset_key.to_user_string() for d in lineage["kafka_offset"]] == ["bekreftelser"]


# ------------------------------------------------------- from Kafka, end to end ----


def test_records_from_kafka_are_backed_up_raw_and_decoded_one_row_each(
    settings, db, producer, topic_names
):
    from backup_pipeline.backup.pass_ import backup_topic
    from backup_pipeline.decode.run import decode_once
    from backup_pipeline.demo.data import good_record
    from backup_pipeline.topics import spec_for_table
    from backup_pipeline_tests.fix_kafka import produce

    for table in AVRO_TABLES:
        spec = spec_for_table(table.raw_table)
        rng = random.Random(14)
        records = [good_record(rng, spec.value_format, spec.table) for _ in range(120)]
        records[7] = type(records[7])(records[7].key, b"\x00\x00\x00\x03\x09garbage", [])
        produce(producer, topic_names[spec.table], records)
        assert backup_topic(settings, spec).records == 120

    reports = {r.table: r for r in decode_once(settings)}

    for table in AVRO_TABLES:
        assert (reports[table.raw_table].decoded, reports[table.raw_table].undecodable) == (119, 1)
        raw = db.execute(f"SELECT count(*) FROM {table.raw_table}").fetchone()[0]
        joined = db.execute(
            f"SELECT count(*) FROM {table.decoded_table} JOIN {table.raw_table} "
            "USING (version, kafka_partition, kafka_offset)"
        ).fetchone()[0]
        assert (raw, joined) == (120, 119)
        # Both writer versions of the demo producer were met and kept.
        assert set(reports[table.raw_table].schema_ids) == {*SCHEMA_IDS[table.raw_table], 0x0309}


def test_a_decode_follow_run_decodes_rows_that_arrive_while_it_runs_and_judges_its_check(
    db, database_url, services, monkeypatch
):
    import dagster as dg

    from backup_pipeline.orchestration.decoded import CHECK, decoded_avro
    from backup_pipeline.orchestration.resources import BackupEngine

    for name, value in {
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": database_url,
        "KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_TOPIC": TOPIC["bekreftelser"],
        "KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_PAAVEGNEAV_TOPIC": TOPIC["bekreftelse_paa_vegne_av"],
        "BACKUP_FOLLOW_POLL_SECONDS": "0.2",
    }.items():
        monkeypatch.setenv(name, value)
    rng = random.Random(16)
    store_raw(db, BEKREFTELSER, [b"junk"])

    def later() -> None:
        # Raw rows committed while the run follows: it must pick them up.
        threading.Event().wait(1.0)
        values = [framed(101, "bekreftelse-v1.avsc", avro_record(rng, "bekreftelser"))] * 3
        store_raw(db, BEKREFTELSER, values, first_offset=100)

    writer = threading.Thread(target=later)
    writer.start()
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [decoded_avro],
            resources={"engine": BackupEngine()},
            instance=instance,
            run_config={"ops": {"decoded_avro": {"config": {"follow_seconds": 4.0}}}},
        )
        writer.join()
        assert result.success
        key = dg.AssetCheckKey(dg.AssetKey("bekreftelser_decoded"), CHECK)
        latest = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])
        evaluation = latest[key].event.asset_check_evaluation
        assert evaluation is not None and evaluation.passed is False  # the junk row
    assert len(decoded(db, BEKREFTELSER)) == 3
