"""What the typed view of the JSON events holds, column by column, said once.

Migration 0007 creates ``bekreftelse_hendelser_typed`` (and ``..._current``) and writes these
descriptions as ``COMMENT ON COLUMN``; the Dagster asset shows the same ones with the
columns they come from. A test holds the view's real columns and types to this list.
A later change to a description needs a migration that runs ``comment_statements`` again.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

# The event types known when the view was written (shared/DATA.md); the view's
# ``known_event_type`` is false for any other.
KNOWN_EVENT_TYPES = (
    "bekreftelse.tilgjengelig",
    "bekreftelse.melding_mottatt",
    "bekreftelse.leveringsfrist_utloept",
    "bekreftelse.register_grace_periode_gjenstaaende_tid",
    "bekreftelse.register_grace_periode_utloept",
    "bekreftelse.register_grace_periode_utloept_etter_ekstern_innsamling",
    "bekreftelse.ekstern_grace_periode_utloept",
    "bekreftelse.periode_avsluttet",
    "bekreftelse.ba_om_aa_avslutte_periode",
    "bekreftelse.paa_vegne_av_startet",
)


@dataclass(frozen=True)
class ViewColumn:
    name: str
    pg_type: str  # as format_type() prints it
    description: str
    source: str  # the raw table's column it is derived from (column lineage)


@dataclass(frozen=True)
class TypedView:
    name: str  # every version; ``current`` is the serving version's
    raw_table: str
    description: str
    columns: tuple[ViewColumn, ...]

    @property
    def current(self) -> str:
        return f"{self.name}_current"

    @property
    def current_description(self) -> str:
        return f"{self.name} for the serving version only (backup_versions): what analysts query."


def _key(name: str, pg_type: str, description: str) -> ViewColumn:
    return ViewColumn(name, pg_type, description, name)


def _field(name: str, pg_type: str, description: str) -> ViewColumn:
    return ViewColumn(name, pg_type, description, "data")


VERSION = (
    "Backup version (BACKUP_VERSION): a re-ingestion writes a new version beside the old one; "
    "part of the primary key. The _current views show the serving version."
)
PARTITION = "Kafka partition the record came from."
OFFSET = (
    "Kafka offset of the record within its partition; with version and partition it leads "
    "back to exactly one stored record."
)
RECORD_KEY = (
    "Record key as Kafka's LongSerializer wrote it: a signed 64-bit integer (often negative: "
    "keys are hashes)."
)
ARBEIDSSOEKER_ID = (
    "arbeidssoekerId from the JSON event: the person's internal id in the arbeidssoekerregister."
)
TRACEPARENT = (
    "The record's last W3C traceparent header; NULL when it had none or it was not usable "
    "(over 58 characters, not UTF-8: the run counts a warning and the headers column still "
    "holds it)."
)
KAFKA_TIMESTAMP = (
    "The record's Kafka timestamp (NULL for rows stored before it was kept, migration 0002)."
)

JSON_TYPED = TypedView(
    name="bekreftelse_hendelser_typed",
    raw_table="bekreftelse_hendelser",
    description=(
        "The JSON events of bekreftelse_hendelser (every version) with their fields as typed "
        "columns. Every stored event is listed, including event types this view does not know "
        "(their fields are NULL; data has the whole event). A value that does not parse is "
        "NULL and named in unparsed_fields."
    ),
    columns=(
        _key("version", "smallint", VERSION),
        _key("kafka_partition", "smallint", PARTITION),
        _key("kafka_offset", "bigint", OFFSET),
        _key("record_key", "bigint", RECORD_KEY),
        _key("arbeidssoeker_id", "bigint", ARBEIDSSOEKER_ID),
        _field(
            "hendelse_type",
            "text",
            "hendelseType: the kind of event, e.g. bekreftelse.tilgjengelig. New kinds appear "
            "over time and are listed too.",
        ),
        _field(
            "known_event_type",
            "boolean",
            "Whether hendelse_type is one of the ten kinds known when this view was written "
            "(false: a newer kind; its own fields are only in data).",
        ),
        _field("hendelse_id", "uuid", "hendelseId: the event's own id."),
        _field("periode_id", "uuid", "periodeId: the job-seeker period the event belongs to."),
        _field(
            "hendelse_tidspunkt",
            "timestamp with time zone",
            "hendelseTidspunkt: when the event happened, whether Jackson wrote it as an "
            "ISO-8601 string or as decimal seconds since 1970.",
        ),
        _field(
            "bekreftelse_id",
            "uuid",
            "bekreftelseId: the confirmation the event is about (tilgjengelig, "
            "melding_mottatt, leveringsfrist_utloept, register_grace_periode_*).",
        ),
        _field(
            "gjelder_fra",
            "timestamp with time zone",
            "gjelderFra: start of the period a confirmation covers (tilgjengelig).",
        ),
        _field(
            "gjelder_til",
            "timestamp with time zone",
            "gjelderTil: end of the period a confirmation covers (tilgjengelig).",
        ),
        _field(
            "leveringsfrist",
            "timestamp with time zone",
            "leveringsfrist: deadline for the confirmation (leveringsfrist_utloept).",
        ),
        _field(
            "gjenstaaende_tid",
            "interval",
            "gjenstaandeTid: time left of the grace period "
            "(register_grace_periode_gjenstaaende_tid), from ISO-8601 (PT168H) or decimal "
            "seconds.",
        ),
        _field(
            "utfoert_av_type",
            "text",
            "utfoertAv.type: who asked to end the period (ba_om_aa_avslutte_periode), e.g. "
            "SLUTTBRUKER.",
        ),
        _field(
            "utfoert_av_id",
            "text",
            "utfoertAv.id: the id of who asked (for SLUTTBRUKER a national identity number: "
            "personal data).",
        ),
        _field(
            "utfoert_av_sikkerhetsnivaa",
            "text",
            "utfoertAv.sikkerhetsnivaa: authentication level of who asked.",
        ),
        _field(
            "kilde", "text", "kilde: the system the event came from, where the event names one."
        ),
        _field(
            "ansvarlig_namespace",
            "text",
            "ansvarligNamespace: the external system's namespace (ekstern_grace_periode_utloept).",
        ),
        _field(
            "ansvarlig_id",
            "text",
            "ansvarligId: the external system's id (ekstern_grace_periode_utloept).",
        ),
        _field(
            "unparsed_fields",
            "text[]",
            "JSON keys present in the event whose value did not parse into its typed column "
            "(which is then NULL); empty when everything parsed.",
        ),
        _key("kafka_timestamp", "timestamp with time zone", KAFKA_TIMESTAMP),
        _key("traceparent", "character varying(58)", TRACEPARENT),
        _key("data", "jsonb", "The whole JSON event as jsonb."),
    ),
)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def comment_statements(view: TypedView) -> list[str]:
    """COMMENT ON both views of ``view`` and each of their columns (names are our own
    constants, so plain SQL text; the descriptions are quoted as literals)."""
    statements = []
    for relation, description in (
        (view.name, view.description),
        (view.current, view.current_description),
    ):
        statements.append(f"COMMENT ON VIEW {relation} IS {_literal(description)}")
        statements.extend(
            f"COMMENT ON COLUMN {relation}.{c.name} IS {_literal(c.description)}"
            for c in view.columns
        )
    return statements


@dataclass(frozen=True)
class ViewSummary:
    """What an analyst finds in the serving version of a typed view."""

    serving_version: int | None
    rows: int
    unparsed_rows: int  # rows with a value that did not parse (listed, with NULL there)
    unknown_type_rows: int  # rows of an event type the view does not know
    by_type: dict[str, int]


def summarize(conn: psycopg.Connection, view: TypedView) -> ViewSummary:
    """One pass over the serving version's rows (a scan: asked on demand, not per batch)."""
    serving = conn.execute(
        "SELECT version FROM backup_versions WHERE table_name = %s AND state = 'serving'",
        (view.raw_table,),
    ).fetchone()
    rows = conn.execute(
        sql.SQL(
            "SELECT coalesce(hendelse_type, '(none)'), count(*),"
            " count(*) FILTER (WHERE cardinality(unparsed_fields) > 0),"
            " count(*) FILTER (WHERE NOT known_event_type)"
            " FROM {} GROUP BY 1 ORDER BY 2 DESC, 1"
        ).format(sql.Identifier(view.current))
    ).fetchall()
    return ViewSummary(
        serving_version=None if serving is None else int(serving[0]),
        rows=sum(int(r[1]) for r in rows),
        unparsed_rows=sum(int(r[2]) for r in rows),
        unknown_type_rows=sum(int(r[3]) for r in rows),
        by_type={str(r[0]): int(r[1]) for r in rows},
    )
