"""A typed view of the JSON event table, and comments on what analysts read.

Revision ID: 0007
Revises: 0006

- bekreftelse_hendelser_typed (every version) and bekreftelse_hendelser_typed_current (the
  serving version, like the ``<table>_current`` views of 0005): one row per row of
  bekreftelse_hendelser, with the event's fields as typed columns. Every row is listed,
  whatever its event type: a type this view does not know yet simply has NULL in the
  fields it lacks, and ``data`` keeps the whole event.
- Three helper functions parse what Jackson writes without ever raising: an instant as
  an ISO-8601 string *or* as decimal seconds (``1741944413.589000000``), a Duration the
  same two ways, and a uuid. A value that does not parse gives NULL and its field's name
  in ``unparsed_fields``, so one malformed event cannot make ``SELECT *`` fail and is not
  hidden either. Each function guards every cast with a regular expression and range
  checks instead of catching errors: an exception block costs a subtransaction per call.
  They use only immutable functions (timestamp arithmetic, ``AT TIME ZONE 'UTC'``), so
  they are honestly IMMUTABLE and an operator may index them (see docs/analysts.md).
  An ISO instant without an offset is ambiguous (it depends on the session's time zone)
  and gives NULL: Jackson writes an Instant with ``Z``.
- COMMENT ON the seed's tables, their ``_current`` views, the bookkeeping tables and
  the typed views, column by column, so psql ``\\d+``, DBeaver and Metabase show what each
  column holds. The typed view's descriptions come from backup_pipeline/typed_views.py,
  which the Dagster asset shows too (said once); a later change to them needs a migration
  that applies ``typed_views.comment_statements`` again.

Only new functions, views and comments: no table is changed and no row is written.
"""

from alembic import op

from backup_pipeline import typed_views

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION backup_try_uuid(value jsonb) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN jsonb_typeof(value) = 'string'
             AND (value #>> '{}')
                 ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
        THEN (value #>> '{}')::uuid
    END
$$;

CREATE OR REPLACE FUNCTION backup_jackson_instant(value jsonb) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    t text;
    rest text;
    zone_text text;
    secs numeric;
    y int;
    mo int;
    d int;
    hh int;
    mi int;
    ss int := 0;
    micros int := 0;
    zh int;
    zm int;
    last_day int;
    zone interval := interval '0';
BEGIN
    IF jsonb_typeof(value) IS NULL OR jsonb_typeof(value) NOT IN ('string', 'number') THEN
        RETURN NULL;
    END IF;
    t := value #>> '{}';
    -- Decimal seconds since the epoch (Jackson's WRITE_DATES_AS_TIMESTAMPS), a JSON number
    -- or a string. Whole seconds and microseconds separately: a double would round.
    IF t ~ '^-?[0-9]{1,11}(\.[0-9]+)?$' THEN
        secs := t::numeric;
        RETURN (timestamp '1970-01-01 00:00:00'
                + trunc(secs)::float8 * interval '1 second'
                + trunc((secs - trunc(secs)) * 1000000)::float8 * interval '1 microsecond')
               AT TIME ZONE 'UTC';
    END IF;
    -- ISO-8601 with an offset: 2025-03-14T09:26:53.589Z, 2025-03-14T10:26:53+01:00.
    -- Matched without capture groups and then cut at fixed places: PostgreSQL's regexp
    -- engine is ~35x slower when it has to report groups (measured: 110 against 3 us).
    IF t !~ ('^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}'
             '(?::[0-9]{2}(?:[.,][0-9]{1,9})?)?(?:[Zz]|[+-][0-9]{2}(?::?[0-9]{2})?)$') THEN
        RETURN NULL;
    END IF;
    y := substr(t, 1, 4)::int;
    mo := substr(t, 6, 2)::int;
    d := substr(t, 9, 2)::int;
    hh := substr(t, 12, 2)::int;
    mi := substr(t, 15, 2)::int;
    rest := substr(t, 17);  -- '', ':SS' or ':SS.fff', then the zone
    zone_text := substring(rest from '[Zz]$|[+-][0-9:]{2,5}$');
    rest := left(rest, length(rest) - length(zone_text));
    IF rest <> '' THEN
        ss := substr(rest, 2, 2)::int;
        micros := coalesce(rpad(nullif(substr(rest, 5, 6), ''), 6, '0')::int, 0);
    END IF;
    IF y < 1 OR mo NOT BETWEEN 1 AND 12 OR d < 1 THEN
        RETURN NULL;
    END IF;
    last_day := CASE
        WHEN mo = 2 AND (y % 4 = 0 AND y % 100 <> 0 OR y % 400 = 0) THEN 29
        WHEN mo = 2 THEN 28
        WHEN mo IN (4, 6, 9, 11) THEN 30
        ELSE 31
    END;
    IF d > last_day OR hh > 23 OR mi > 59 OR ss > 59 THEN
        RETURN NULL;
    END IF;
    IF zone_text ~ '^[+-]' THEN
        zh := substr(zone_text, 2, 2)::int;
        zm := CASE WHEN length(zone_text) > 3 THEN right(zone_text, 2)::int ELSE 0 END;
        IF zh > 18 OR zm > 59 THEN
            RETURN NULL;
        END IF;
        zone := make_interval(hours => zh, mins => zm);
        IF zone_text LIKE '-%' THEN
            zone := -zone;
        END IF;
    END IF;
    -- The wall-clock time at the offset, minus the offset, is UTC.
    RETURN (make_timestamp(y, mo, d, hh, mi, ss)
            + micros * interval '1 microsecond'
            - zone) AT TIME ZONE 'UTC';
END
$$;

CREATE OR REPLACE FUNCTION backup_jackson_duration(value jsonb) RETURNS interval
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    t text;
    m text[];
    secs numeric;
BEGIN
    IF jsonb_typeof(value) IS NULL OR jsonb_typeof(value) NOT IN ('string', 'number') THEN
        RETURN NULL;
    END IF;
    t := value #>> '{}';
    IF t ~ '^-?[0-9]{1,12}(\.[0-9]+)?$' THEN  -- decimal seconds: 604800.000000000
        secs := t::numeric;
    ELSE  -- java.time.Duration.toString(): PT168H, PT1H30M, PT-0.5S
        m := regexp_match(t, '^PT(?:(-?[0-9]{1,9})H)?(?:(-?[0-9]{1,9})M)?'
                             '(?:(-?[0-9]{1,12}(?:\.[0-9]+)?)S)?$');
        IF m IS NULL OR t = 'PT' THEN
            RETURN NULL;
        END IF;
        secs := coalesce(m[1]::numeric, 0) * 3600 + coalesce(m[2]::numeric, 0) * 60
                + coalesce(m[3]::numeric, 0);
    END IF;
    RETURN trunc(secs)::float8 * interval '1 second'
           + trunc((secs - trunc(secs)) * 1000000)::float8 * interval '1 microsecond';
END
$$;
"""

# Fields parsed into typed columns whose source may fail to parse: (column, JSON key).
PARSED_FIELDS = (
    ("hendelse_id", "hendelseId"),
    ("periode_id", "periodeId"),
    ("hendelse_tidspunkt", "hendelseTidspunkt"),
    ("bekreftelse_id", "bekreftelseId"),
    ("gjelder_fra", "gjelderFra"),
    ("gjelder_til", "gjelderTil"),
    ("leveringsfrist", "leveringsfrist"),
    ("gjenstaaende_tid", "gjenstaandeTid"),
)

_UNPARSED = ",\n            ".join(
    f"CASE WHEN p.{column} IS NULL AND jsonb_typeof(p.data -> '{key}') <> 'null' THEN '{key}' END"
    for column, key in PARSED_FIELDS
)
_KNOWN = ", ".join(f"'{t}'" for t in typed_views.KNOWN_EVENT_TYPES)

# A subquery, not a function returning a row: a view the planner can see through keeps
# "WHERE version = ..." and "WHERE arbeidssoeker_id = ..." on the table's indexes.
TYPED_VIEW = f"""
CREATE OR REPLACE VIEW bekreftelse_hendelser_typed AS
SELECT
    p.version, p.kafka_partition, p.kafka_offset, p.record_key, p.arbeidssoeker_id,
    p.hendelse_type,
    coalesce(p.hendelse_type IN ({_KNOWN}), false) AS known_event_type,
    p.hendelse_id, p.periode_id, p.hendelse_tidspunkt,
    p.bekreftelse_id, p.gjelder_fra, p.gjelder_til, p.leveringsfrist, p.gjenstaaende_tid,
    p.utfoert_av_type, p.utfoert_av_id, p.utfoert_av_sikkerhetsnivaa, p.kilde,
    p.ansvarlig_namespace, p.ansvarlig_id,
    array_remove(ARRAY[
            {_UNPARSED}
        ]::text[], NULL) AS unparsed_fields,
    p.kafka_timestamp, p.traceparent, p.data
FROM (
    SELECT
        h.version, h.kafka_partition, h.kafka_offset, h.record_key, h.arbeidssoeker_id,
        h.data ->> 'hendelseType' AS hendelse_type,
        backup_try_uuid(h.data -> 'hendelseId') AS hendelse_id,
        backup_try_uuid(h.data -> 'periodeId') AS periode_id,
        backup_jackson_instant(h.data -> 'hendelseTidspunkt') AS hendelse_tidspunkt,
        backup_try_uuid(h.data -> 'bekreftelseId') AS bekreftelse_id,
        backup_jackson_instant(h.data -> 'gjelderFra') AS gjelder_fra,
        backup_jackson_instant(h.data -> 'gjelderTil') AS gjelder_til,
        backup_jackson_instant(h.data -> 'leveringsfrist') AS leveringsfrist,
        backup_jackson_duration(h.data -> 'gjenstaandeTid') AS gjenstaaende_tid,
        h.data #>> '{{utfoertAv,type}}' AS utfoert_av_type,
        h.data #>> '{{utfoertAv,id}}' AS utfoert_av_id,
        h.data #>> '{{utfoertAv,sikkerhetsnivaa}}' AS utfoert_av_sikkerhetsnivaa,
        h.data ->> 'kilde' AS kilde,
        h.data ->> 'ansvarligNamespace' AS ansvarlig_namespace,
        h.data ->> 'ansvarligId' AS ansvarlig_id,
        h.kafka_timestamp, h.traceparent, h.data
    FROM bekreftelse_hendelser h
) AS p;

CREATE OR REPLACE VIEW bekreftelse_hendelser_typed_current AS
SELECT t.* FROM bekreftelse_hendelser_typed t
WHERE t.version = (
    SELECT v.version FROM backup_versions v
    WHERE v.table_name = 'bekreftelse_hendelser' AND v.state = 'serving'
);
"""

_KEY = {
    "version": typed_views.VERSION,
    "kafka_partition": typed_views.PARTITION,
    "kafka_offset": typed_views.OFFSET,
    "record_key": typed_views.RECORD_KEY,
}
_RECORD = {
    "traceparent": typed_views.TRACEPARENT,
    "kafka_timestamp": typed_views.KAFKA_TIMESTAMP,
    "kafka_timestamp_type": "1 = CreateTime (set by the producer), 2 = LogAppendTime (by "
    "the broker).",
    "headers": "All the record's headers in order, duplicates included: a JSON array of "
    "[name, base64 value or null].",
}
_AVRO_DATA = (
    "The value bytes exactly as produced: Confluent-framed Avro (byte 0, a 4-byte "
    "big-endian schema id, the Avro binary body)."
)

_HENDELSER = {
    **_KEY,
    "arbeidssoeker_id": typed_views.ARBEIDSSOEKER_ID,
    "traceparent": _RECORD["traceparent"],
    "data": "The JSON event as jsonb (hendelseType, hendelseId, periodeId, arbeidssoekerId, "
    "hendelseTidspunkt, ...). bekreftelse_hendelser_typed has its fields as typed columns.",
    "kafka_timestamp": _RECORD["kafka_timestamp"],
    "kafka_timestamp_type": _RECORD["kafka_timestamp_type"],
    "headers": _RECORD["headers"],
    "kafka_value": "The value bytes exactly as produced (jsonb normalises whitespace, key "
    "order and duplicate keys; a restore writes these bytes).",
}
_BEKREFTELSER = {
    **_KEY,
    "traceparent": _RECORD["traceparent"],
    "data": _AVRO_DATA + " Record no.nav.paw.bekreftelse.melding.v1.Bekreftelse.",
    **{k: v for k, v in _RECORD.items() if k != "traceparent"},
}
_PAA_VEGNE_AV = {
    **_BEKREFTELSER,
    "data": _AVRO_DATA + " Record no.nav.paw.bekreftelse.paavegneav.v1.PaaVegneAv.",
}

RAW_TABLES = {
    "bekreftelse_hendelser": (
        "Backup of the Kafka topic paw.arbeidssoker-bekreftelse-hendelseslogg-v2 (name set "
        "by KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_HENDELSESLOGG_TOPIC): one row per record, "
        "every version. Query bekreftelse_hendelser_typed_current for typed columns of the "
        "serving version.",
        _HENDELSER,
    ),
    "bekreftelser": (
        "Backup of the Kafka topic paw.arbeidssoker-bekreftelse-v1 (name set by "
        "KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_TOPIC): one row per record, every version, "
        "values stored byte for byte.",
        _BEKREFTELSER,
    ),
    "bekreftelse_paa_vegne_av": (
        "Backup of the Kafka topic paw.arbeidssoker-bekreftelse-paavegneav-v2 (name set by "
        "KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_PAAVEGNEAV_TOPIC): one row per record, every "
        "version, values stored byte for byte.",
        _PAA_VEGNE_AV,
    ),
}

BOOKKEEPING = {
    "bekreftelse_hwm": (
        "High-water marks: per version, topic and partition, the offset of the last record "
        "that is safely stored (-1: nothing yet). Written in the same transaction as the rows.",
        {
            "version": "Backup version.",
            "kafka_partition": "Kafka partition.",
            "kafka_offset": "Offset of the last record stored (or skipped as a transaction "
            "marker or compacted away); the next pass reads from here + 1.",
            "kafka_topic": "Kafka topic name.",
        },
    ),
    "backup_versions": (
        "Per backup table and version its state: serving (what the _current views and the "
        "CLI read), reingesting (being filled from the topic's start) or retired.",
        {},
    ),
    "backup_quarantine": (
        "Records that could not go into their table (tombstone, invalid JSON, key not 8 "
        "bytes, traceparent too long, ...), kept raw with the reason.",
        {"reason": "Why the record could not be stored in its table."},
    ),
    "backup_gaps": (
        "Offset ranges Kafka deleted (retention) before they were backed up: data loss "
        "made visible.",
        {},
    ),
}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _execute(statement: str) -> None:
    # Passed to the driver as it is: SQLAlchemy's text() would read ":word" in a comment as
    # a bind parameter, and with parameters psycopg would read "%" in the functions.
    op.get_bind().exec_driver_sql(statement, execution_options={"no_parameters": True})


def _comment(kind: str, name: str, text: str) -> None:
    _execute(f"COMMENT ON {kind} {name} IS {_literal(text)}")


def _columns_of(relation: str) -> set[str]:
    rows = op.get_bind().exec_driver_sql(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%(r)s) "
        "AND attnum > 0 AND NOT attisdropped",
        {"r": relation},
    )
    return {str(row[0]) for row in rows}


def _comment_relation(kind: str, relation: str, comment: str, columns: dict[str, str]) -> None:
    # Only columns that exist: an adopted database may lack the later, additive ones.
    existing = _columns_of(relation)
    if not existing:
        return
    _comment(kind, relation, comment)
    for column, text in columns.items():
        if column in existing:
            _comment("COLUMN", f"{relation}.{column}", text)


def upgrade() -> None:
    _execute(FUNCTIONS)
    _execute(TYPED_VIEW)
    for table, (comment, columns) in RAW_TABLES.items():
        _comment_relation("TABLE", table, comment, columns)
        _comment_relation(
            "VIEW",
            f"{table}_current",
            f"{table} for the serving version only (backup_versions): what analysts query.",
            columns,
        )
    for table, (comment, columns) in BOOKKEEPING.items():
        _comment_relation("TABLE", table, comment, columns)
    for statement in typed_views.comment_statements(typed_views.JSON_TYPED):
        _execute(statement)
