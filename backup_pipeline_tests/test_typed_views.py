"""The typed view of the JSON events (migration 0007) on a real, migrated PostgreSQL: both
ways Jackson writes an instant, unknown event types listed, a malformed value that breaks
nothing, the _current view following a version switch, and comments SQL tools show."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from backup_pipeline import typed_views
from backup_pipeline.demo import data

PERIODE = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
HENDELSE = "6f1c1f5e-9a0e-4f1e-8a55-1d2c3b4a5e6f"
BEKREFTELSE = "0b6d3d8e-2c41-4a5e-9d0f-7e8f9a0b1c2d"

hypothesis_db = hypothesis_settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def insert(
    conn: psycopg.Connection, event: dict[str, Any] | str, *, version: int = 1, offset: int = 0
) -> None:
    """A row as the backup stores it; ``event`` as JSON text keeps numbers exactly."""
    text = event if isinstance(event, str) else json.dumps(event)
    conn.execute(
        "INSERT INTO bekreftelse_hendelser (version, kafka_partition, kafka_offset, record_key,"
        " arbeidssoeker_id, data, kafka_value) VALUES (%s, 0, %s, -5, 42, %s::jsonb, %s)",
        (version, offset, text, text.encode()),
    )


def serve(conn: psycopg.Connection, **states: str) -> None:
    """backup_versions for bekreftelse_hendelser: {"v1": "serving", ...}."""
    conn.execute("DELETE FROM backup_versions WHERE table_name = 'bekreftelse_hendelser'")
    for name, state in states.items():
        conn.execute(
            "INSERT INTO backup_versions (table_name, version, kafka_topic, state)"
            " VALUES ('bekreftelse_hendelser', %s, 't', %s)",
            (int(name.removeprefix("v")), state),
        )


def typed(conn: psycopg.Connection, where: str = "true") -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        f"SELECT * FROM bekreftelse_hendelser_typed WHERE {where} ORDER BY version, kafka_offset"
    ).fetchall()


def instant(conn: psycopg.Connection, value: str) -> datetime | None:
    row = conn.execute("SELECT backup_jackson_instant(%s::jsonb)", (value,)).fetchone()
    assert row is not None
    result: datetime | None = row[0]
    return result


def event(kind: str, when: object, **fields: object) -> dict[str, Any]:
    return {
        "hendelseId": HENDELSE,
        "periodeId": PERIODE,
        "arbeidssoekerId": 42,
        "hendelseTidspunkt": when,
        "hendelseType": kind,
        **fields,
    }


def test_both_ways_jackson_writes_an_instant_give_the_same_timestamptz(db):
    iso = json.dumps(event("bekreftelse.melding_mottatt", "2025-03-14T09:26:53.589Z"))
    # Decimal seconds are a JSON number; as text so that no float rounds it first.
    decimal = json.dumps(event("bekreftelse.melding_mottatt", "@")).replace(
        '"@"', "1741944413.589000000"
    )
    insert(db, iso, offset=0)
    insert(db, decimal, offset=1)
    rows = typed(db)
    expected = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)
    assert [r["hendelse_tidspunkt"] for r in rows] == [expected, expected]
    assert [r["unparsed_fields"] for r in rows] == [[], []]
    assert rows[0]["hendelse_id"].hex == HENDELSE.replace("-", "")
    assert str(rows[0]["periode_id"]) == PERIODE
    assert rows[0]["hendelse_type"] == "bekreftelse.melding_mottatt"
    assert rows[0]["known_event_type"] is True


def test_every_demo_event_parses_and_matches_its_json(db):
    """The demo generator writes both shapes at random, like the real topic."""
    rng = random.Random(18)
    values = [data.event_value(rng) for _ in range(200)]
    for offset, value in enumerate(values):
        insert(db, value.decode(), offset=offset)
    rows = typed(db)
    assert len(rows) == 200
    shapes = set()
    for value, row in zip(values, rows, strict=True):
        source = json.loads(value, parse_float=Decimal)
        when = source["hendelseTidspunkt"]
        shapes.add(type(when))
        if isinstance(when, Decimal):
            expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
                microseconds=int(when * 1_000_000)
            )
        else:
            expected = datetime.fromisoformat(when)
        assert row["hendelse_tidspunkt"] == expected, value
        assert row["unparsed_fields"] == []
        assert row["known_event_type"] is True
        assert str(row["periode_id"]) == source["periodeId"]
        if "bekreftelseId" in source:
            assert str(row["bekreftelse_id"]) == source["bekreftelseId"]
        if "gjelderFra" in source:
            assert row["gjelder_fra"] == datetime.fromisoformat(source["gjelderFra"])
        if "leveringsfrist" in source:
            assert row["leveringsfrist"] == datetime.fromisoformat(source["leveringsfrist"])
        if "utfoertAv" in source:
            assert row["utfoert_av_type"] == source["utfoertAv"]["type"]
            assert row["utfoert_av_sikkerhetsnivaa"] == source["utfoertAv"]["sikkerhetsnivaa"]
    assert shapes == {str, Decimal}


def test_per_type_fields_are_typed_columns(db):
    insert(
        db,
        event(
            "bekreftelse.tilgjengelig",
            "2025-01-05T12:00:00Z",
            bekreftelseId=BEKREFTELSE,
            gjelderFra="2025-01-06T00:00:00Z",
            gjelderTil=1737331200.0,
        ),
        offset=0,
    )
    insert(
        db,
        event(
            "bekreftelse.register_grace_periode_gjenstaaende_tid",
            "2025-01-05T12:00:00+01:00",
            bekreftelseId=BEKREFTELSE,
            gjenstaandeTid="PT168H",
        ),
        offset=1,
    )
    insert(
        db,
        event(
            "bekreftelse.ekstern_grace_periode_utloept",
            "2025-01-05T12:00:00Z",
            ansvarligNamespace="dagpenger",
            ansvarligId="dp-bekreftelse",
        ),
        offset=2,
    )
    tilgjengelig, gjenstaaende, ekstern = typed(db)
    assert str(tilgjengelig["bekreftelse_id"]) == BEKREFTELSE
    assert tilgjengelig["gjelder_fra"] == datetime(2025, 1, 6, tzinfo=UTC)
    assert tilgjengelig["gjelder_til"] == datetime(2025, 1, 20, tzinfo=UTC)
    assert gjenstaaende["hendelse_tidspunkt"] == datetime(2025, 1, 5, 11, tzinfo=UTC)
    assert gjenstaaende["gjenstaaende_tid"] == timedelta(hours=168)
    assert (ekstern["ansvarlig_namespace"], ekstern["ansvarlig_id"]) == (
        "dagpenger",
        "dp-bekreftelse",
    )
    assert ekstern["gjelder_fra"] is None and ekstern["bekreftelse_id"] is None


def test_an_unknown_event_type_is_listed_with_its_fields_null(db):
    insert(db, event("bekreftelse.noe_helt_nytt", "2025-03-14T09:26:53Z", nyttFelt=7), offset=0)
    insert(db, {"arbeidssoekerId": 42, "noe": "uten type"}, offset=1)
    new, untyped = typed(db)
    assert new["hendelse_type"] == "bekreftelse.noe_helt_nytt"
    assert new["known_event_type"] is False
    assert new["hendelse_tidspunkt"] == datetime(2025, 3, 14, 9, 26, 53, tzinfo=UTC)
    assert new["bekreftelse_id"] is None and new["gjelder_fra"] is None
    assert new["data"]["nyttFelt"] == 7
    assert untyped["hendelse_type"] is None and untyped["known_event_type"] is False
    assert untyped["hendelse_id"] is None and untyped["unparsed_fields"] == []


def test_malformed_values_are_null_and_named_and_select_star_still_works(db):
    bad = {
        "hendelseTidspunkt": "2025-02-30T25:61:00Z",
        "periodeId": "not-a-uuid",
        "bekreftelseId": 12,
        "gjelderFra": {"epochSecond": 1},
        "leveringsfrist": "99999999999999999999999",
        "gjenstaandeTid": "PT",
    }
    insert(db, {**event("bekreftelse.tilgjengelig", None), **bad}, offset=0)
    insert(db, event("bekreftelse.tilgjengelig", "2025-03-14T09:26:53Z"), offset=1)
    # A JSON null is "not given", not "did not parse".
    insert(db, event("bekreftelse.tilgjengelig", None, gjelderTil=None), offset=2)
    broken, fine, nulls = typed(db)
    assert sorted(broken["unparsed_fields"]) == sorted(bad)
    for column in ("hendelse_tidspunkt", "periode_id", "bekreftelse_id", "gjelder_fra"):
        assert broken[column] is None
    assert broken["hendelse_id"] is not None  # the other fields of the event still parse
    assert fine["unparsed_fields"] == [] and fine["hendelse_tidspunkt"] is not None
    assert nulls["unparsed_fields"] == [] and nulls["hendelse_tidspunkt"] is None
    count = db.execute(
        "SELECT count(*) FROM bekreftelse_hendelser_typed WHERE cardinality(unparsed_fields) > 0"
    ).fetchone()
    assert count == (1,)


@hypothesis_db
# NUL is left out: jsonb cannot hold it, so no stored event has one.
@given(
    text=st.text(st.characters(exclude_characters="\x00"), max_size=40)
    | st.from_regex(r"\A[-+0-9:.TZ ]{0,35}\Z")
)
@example(text="0000-01-01T00:00:00Z")
@example(text="2025-02-29T00:00:00Z")
@example(text="2025-01-01T00:00:00+99:00")
@example(text="1" * 40)
@example(text="1e400")
def test_no_string_makes_the_instant_parser_raise(db, text):
    for value in (json.dumps(text), text):
        try:
            db.execute("SELECT %s::jsonb", (value,))
        except psycopg.DataError:
            continue  # not JSON to PostgreSQL: never in the table (the backup quarantines it)
        instant(db, value)  # must not raise; NULL is the answer for what does not parse
        db.execute("SELECT backup_jackson_duration(%s::jsonb)", (value,))
        db.execute("SELECT backup_try_uuid(%s::jsonb)", (value,))


@hypothesis_db
@given(
    when=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    offset_minutes=st.integers(-18 * 60, 18 * 60),
)
def test_any_instant_round_trips_in_both_shapes(db, when, offset_minutes):
    local = when.astimezone(timezone_for(offset_minutes))
    assert instant(db, json.dumps(local.isoformat())) == when
    assert instant(db, json.dumps(when.isoformat().replace("+00:00", "Z"))) == when
    micros = (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    whole, fraction = divmod(abs(micros), 1_000_000)
    sign = "-" if micros < 0 else ""
    text = f"{sign}{whole}.{fraction:06d}000"  # nanoseconds, as Jackson writes them
    if whole < 10**11:
        assert instant(db, text) == when


def timezone_for(minutes: int) -> Any:
    from datetime import timezone

    return timezone(timedelta(minutes=minutes))


def test_current_view_follows_the_serving_version(db):
    insert(db, event("bekreftelse.melding_mottatt", "2025-03-14T09:26:53Z"), version=1)
    insert(db, event("bekreftelse.periode_avsluttet", 1741944413.5), version=2)
    current = "SELECT version, hendelse_type FROM bekreftelse_hendelser_typed_current"
    serve(db, v1="serving", v2="reingesting")
    assert db.execute(current).fetchall() == [(1, "bekreftelse.melding_mottatt")]
    serve(db, v1="retired", v2="serving")
    assert db.execute(current).fetchall() == [(2, "bekreftelse.periode_avsluttet")]


def test_the_current_view_keeps_the_version_predicate_on_the_primary_key(db):
    """The view stays transparent to the planner: a version's rows come from the table's
    primary key index, not a scan of every version."""
    serve(db, v1="serving")
    db.execute("SET enable_seqscan = off")
    plan = "\n".join(
        str(row[0])
        for row in db.execute(
            "EXPLAIN SELECT * FROM bekreftelse_hendelser_typed_current WHERE kafka_offset = 5"
        )
    )
    assert "bekreftelse_hendelser_pkey" in plan


def comments(conn: psycopg.Connection, relation: str) -> dict[str, str | None]:
    """The description of a relation ('') and of each of its columns, from pg_description."""
    rows = conn.execute(
        """
        SELECT coalesce(a.attname, ''), d.description
        FROM pg_class c
        LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_description d ON d.objoid = c.oid
             AND d.classoid = 'pg_class'::regclass AND d.objsubid = coalesce(a.attnum, 0)
        WHERE c.oid = %s::regclass
        UNION ALL
        SELECT '', obj_description(%s::regclass, 'pg_class')
        """,
        (relation, relation),
    ).fetchall()
    return dict(rows)


def test_raw_tables_views_and_typed_views_have_comments_on_every_column(db):
    relations = [
        "bekreftelse_hendelser",
        "bekreftelser",
        "bekreftelse_paa_vegne_av",
        "bekreftelse_hendelser_current",
        "bekreftelser_current",
        "bekreftelse_paa_vegne_av_current",
        "bekreftelse_hendelser_typed",
        "bekreftelse_hendelser_typed_current",
    ]
    for relation in relations:
        described = comments(db, relation)
        missing = sorted(name or "(the relation)" for name, text in described.items() if not text)
        assert not missing, f"{relation}: no comment on {missing}"
    for table in ("bekreftelse_hwm", "backup_versions", "backup_quarantine", "backup_gaps"):
        assert comments(db, table)[""], table


def test_the_declared_descriptions_are_the_database_comments(db):
    """One description per column wherever an analyst reads it: the Dagster UI shows
    typed_views' descriptions, psql \\d+ shows the comments."""
    view = typed_views.JSON_TYPED
    for relation, description in (
        (view.name, view.description),
        (view.current, view.current_description),
    ):
        described = comments(db, relation)
        assert described.pop("") == description
        assert described == {c.name: c.description for c in view.columns}


def test_database_types_are_the_declared_ones(db):
    rows = db.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
        WHERE a.attrelid = 'bekreftelse_hendelser_typed'::regclass AND a.attnum > 0
        ORDER BY a.attnum
        """
    ).fetchall()
    assert rows == [(c.name, c.pg_type) for c in typed_views.JSON_TYPED.columns]


def test_jsonb_parameter_reaches_the_view_unchanged(db):
    """The view reads what the backup's writer stores (COPY of jsonb), not only SQL text."""
    db.execute(
        "INSERT INTO bekreftelse_hendelser (version, kafka_partition, kafka_offset, record_key,"
        " arbeidssoeker_id, data) VALUES (1, 1, 1, 1, 1, %s)",
        (Jsonb(event("bekreftelse.periode_avsluttet", "2025-01-01T00:00:00Z")),),
    )
    assert typed(db)[0]["hendelse_tidspunkt"] == datetime(2025, 1, 1, tzinfo=UTC)


def test_the_sql_in_docs_analysts_on_the_typed_view_runs(db):
    """The worked questions on the JSON view are run as written (the ones on the decoded
    Avro tables need those tables, made by the decode migration)."""
    docs = (Path(__file__).parent.parent / "docs" / "analysts.md").read_text()
    blocks = [b for b in re.findall(r"```sql\n(.*?)```", docs, re.DOTALL) if "_decoded" not in b]
    assert any("bekreftelse_hendelser_typed_current" in b for b in blocks)
    insert(db, event("bekreftelse.melding_mottatt", "2025-01-05T12:00:00Z"))
    serve(db, v1="serving")
    for block in blocks:
        if "CREATE INDEX CONCURRENTLY" in block:
            db.execute(block)  # autocommit: CONCURRENTLY is allowed
            continue
        cursor = db.execute(block)
        while cursor.nextset():  # "SET TIME ZONE ...; SELECT ...": the last result counts
            pass
        rows = cursor.fetchall()
        if "hendelse_type, count(*)" in block:
            assert len(rows) == 1
    # The index the page suggests serves a window through the view.
    db.execute("SET enable_seqscan = off")
    plan = db.execute(
        "EXPLAIN SELECT * FROM bekreftelse_hendelser_typed_current"
        " WHERE hendelse_tidspunkt >= '2025-01-01' AND hendelse_tidspunkt < '2025-02-01'"
    ).fetchall()
    assert "bekreftelse_hendelser_tidspunkt_idx" in str(plan)
