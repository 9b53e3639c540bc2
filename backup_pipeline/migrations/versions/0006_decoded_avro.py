"""Decoded Avro: the writer schemas, typed tables and views, their watermark, undecodables.

Revision ID: 0006
Revises: 0005

- backup_schemas: every Confluent schema id met in a stored value, with its writer schema
  exactly as resolved, where it came from ('registry', or 'vendored:<file>' when no
  registry knew it and a schema shipped with the pipeline decoded it) and when. With it
  the database alone is enough to read the bytes years later, registry or not.
- bekreftelser_decoded, bekreftelse_paa_vegne_av_decoded: one typed row per decodable raw
  row, keyed like the raw table (version, kafka_partition, kafka_offset) so each leads back
  to its exact bytes, plus the schema id that decoded it.
- <decoded>_current views: the serving version's rows, like the raw tables' views (0005).
- backup_decode_hwm: per (table, version, partition) the last raw offset the decode pass
  has handled; written in the transaction that writes the rows it covers, so a crash
  loses and duplicates nothing.
- backup_undecodable: raw rows that could not be decoded, with the reason and the raw
  reference; ``resolved_at`` is set (the row kept) when a later pass decodes it.
  Acknowledgement columns as on backup_quarantine (0005).
- COMMENT ON every new table, view and column (psql \\d+, DBeaver, Metabase show them).

The column descriptions are a frozen copy of backup_pipeline/decode/catalog.py (migrations
do not import the package they migrate for); test_decode keeps the two equal.
Only new tables and views: nothing the backup writes is touched.
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_KEY = [
    ("version", "smallint", "Backup version of the raw row (see backup_versions)."),
    ("kafka_partition", "smallint", "Kafka partition of the raw row."),
    ("kafka_offset", "bigint", "Kafka offset of the raw row."),
    (
        "schema_id",
        "integer",
        "Confluent schema id from the value's frame (bytes 1-4); the writer schema is kept "
        "in backup_schemas.",
    ),
]
_LOESNING = "UKJENT_VERDI, ARBEIDSSOEKERREGISTERET, DAGPENGER, FRISKMELDT_TIL_ARBEIDSFORMIDLING"
_PERIODE = (
    "UUID of the job-seeker period (arbeidssøkerperiode) the message concerns, as on the "
    "Periode topic."
)

DECODED = {
    "bekreftelser": (
        "Decoded bekreftelser (confirmations that a person is still a job seeker), one row "
        "per raw row of bekreftelser.",
        [
            *_KEY,
            ("periode_id", "uuid", _PERIODE),
            (
                "bekreftelsesloesning",
                "text",
                f"Which system/solution sent the confirmation (enum symbol: {_LOESNING}).",
            ),
            (
                "bekreftelse_id",
                "uuid",
                "Unique id of the message; duplicates are network retries and can be ignored.",
            ),
            (
                "svar_sendt_inn_av_tidspunkt",
                "timestamptz",
                "When the answer was submitted (timestamp-millis).",
            ),
            (
                "bruker_type",
                "text",
                "Kind of user who submitted the answer (enum symbol: UKJENT_VERDI, UDEFINERT, "
                "VEILEDER, SYSTEM, SLUTTBRUKER).",
            ),
            (
                "bruker_id",
                "text",
                "The submitting user's id: national id number (fødselsnummer/D-nummer) for an "
                "end user, NAV ident for a case worker, system name (APP:VERSION) for a system.",
            ),
            (
                "bruker_sikkerhetsnivaa",
                "text",
                "Security level used to authenticate the user, as ISSUER:ACR (e.g. "
                "tokenx:Level4). NULL when not given or written before 2025-03-07.",
            ),
            (
                "svar_sendt_inn_av_kilde",
                "text",
                "Name of the system that made the change or was used to make it.",
            ),
            (
                "svar_sendt_inn_av_aarsak",
                "text",
                "Reason for the message, e.g. 'Bruker sendte inn dagpengemeldekort'.",
            ),
            (
                "gjelder_fra",
                "timestamptz",
                "Start of the period the confirmation covers (timestamp-millis).",
            ),
            (
                "gjelder_til",
                "timestamptz",
                "End of the period the confirmation covers (timestamp-millis).",
            ),
            (
                "har_jobbet_i_denne_perioden",
                "boolean",
                "Answer: the person has worked in this period.",
            ),
            (
                "vil_fortsette_som_arbeidssoeker",
                "boolean",
                "Answer: the person wants to continue as a registered job seeker.",
            ),
        ],
    ),
    "bekreftelse_paa_vegne_av": (
        "Decoded bekreftelse_paa_vegne_av (a system starts or stops confirming on a person's "
        "behalf), one row per raw row of bekreftelse_paa_vegne_av.",
        [
            *_KEY,
            ("periode_id", "uuid", _PERIODE),
            (
                "bekreftelsesloesning",
                "text",
                "Which system/solution sends confirmations on the person's behalf (enum "
                f"symbol: {_LOESNING}).",
            ),
            (
                "handling",
                "text",
                "Which branch of the handling union: 'Start' (the system starts sending "
                "confirmations on the person's behalf for the period) or 'Stopp' (it stops).",
            ),
            (
                "interval_ms",
                "bigint",
                "Start only: how often the system will send confirmations, in milliseconds "
                "(a hint; the register does nothing when it expires). NULL for Stopp.",
            ),
            (
                "grace_ms",
                "bigint",
                "Start only: grace period in milliseconds after the interval before the "
                "system stops on its own; used to detect dead clients. NULL for Stopp.",
            ),
            (
                "frist_brutt",
                "boolean",
                "Stopp only: the stop is because the person missed the deadline in the "
                "external system. NULL for Start, and for Stopp written before 2025-03-26 "
                "(then an empty record).",
            ),
        ],
    ),
}

BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS backup_schemas
(
    schema_id integer PRIMARY KEY,
    schema_json text NOT NULL,
    record_name text NOT NULL,
    source text NOT NULL CHECK (source = 'registry' OR source LIKE 'vendored:%'),
    resolved_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE backup_schemas IS
    'Writer schema of every Confluent schema id met in a stored Avro value, so the backup '
    'can be decoded without the schema registry.';
COMMENT ON COLUMN backup_schemas.schema_id IS 'Confluent schema id (bytes 1-4 of a value).';
COMMENT ON COLUMN backup_schemas.schema_json IS
    'The writer schema (Avro JSON) exactly as resolved.';
COMMENT ON COLUMN backup_schemas.record_name IS 'Full name of the schema''s top-level record.';
COMMENT ON COLUMN backup_schemas.source IS
    '''registry'' (fetched from KAFKA_SCHEMA_REGISTRY) or ''vendored:<file>'' (a schema '
    'shipped with the pipeline that decoded a value of this id, every byte of it).';
COMMENT ON COLUMN backup_schemas.resolved_at IS 'When the id was resolved.';

CREATE TABLE IF NOT EXISTS backup_decode_hwm
(
    table_name text NOT NULL,
    version smallint NOT NULL,
    kafka_partition smallint NOT NULL,
    kafka_offset bigint NOT NULL,
    PRIMARY KEY (table_name, version, kafka_partition)
);
COMMENT ON TABLE backup_decode_hwm IS
    'Decode watermark: per raw table, version and partition, the last raw offset the decode '
    'pass has handled (decoded or listed in backup_undecodable); -1 = none yet.';

CREATE TABLE IF NOT EXISTS backup_undecodable
(
    id bigint GENERATED BY DEFAULT AS IDENTITY UNIQUE,
    table_name text NOT NULL,
    version smallint NOT NULL,
    kafka_partition smallint NOT NULL,
    kafka_offset bigint NOT NULL,
    schema_id integer,
    reason_kind text NOT NULL,
    reason text NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_tried_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 1,
    resolved_at timestamptz,
    acknowledged_at timestamptz,
    acknowledged_by text,
    acknowledged_note text,
    PRIMARY KEY (table_name, version, kafka_partition, kafka_offset)
);
CREATE INDEX IF NOT EXISTS backup_undecodable_open_idx
    ON backup_undecodable (table_name, schema_id) WHERE resolved_at IS NULL;
COMMENT ON TABLE backup_undecodable IS
    'Raw Avro rows that could not be decoded, with the reason; the raw bytes are the row of '
    'table_name with the same (version, kafka_partition, kafka_offset). resolved_at is set '
    'when a later pass decoded it (then it is in the decoded table).';
COMMENT ON COLUMN backup_undecodable.reason_kind IS
    'not_framed, unknown_schema, schema_pending (registry not reachable yet; retried), '
    'does_not_fit, unknown_enum_symbol.';
COMMENT ON COLUMN backup_undecodable.schema_id IS 'Schema id of the frame; NULL if not framed.';
COMMENT ON COLUMN backup_undecodable.resolved_at IS 'When a later pass decoded the row.';
COMMENT ON COLUMN backup_undecodable.acknowledged_at IS
    'A person reviewed the row (backup-pipeline decode --acknowledge).';
"""

DECODED_CURRENT_VIEW = """
CREATE OR REPLACE VIEW {table}_decoded_current AS
SELECT d.* FROM {table}_decoded d
WHERE d.version = (
    SELECT v.version FROM backup_versions v
    WHERE v.table_name = '{table}' AND v.state = 'serving'
)
"""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def upgrade() -> None:
    op.execute(BOOKKEEPING)
    for raw, (description, columns) in DECODED.items():
        decoded = f"{raw}_decoded"
        body = ",\n    ".join(
            f"{name} {pg_type}" + (" NOT NULL" if i < 4 else "")
            for i, (name, pg_type, _) in enumerate(columns)
        )
        op.execute(
            f"CREATE TABLE IF NOT EXISTS {decoded}\n(\n    {body},\n"
            "    PRIMARY KEY (version, kafka_partition, kafka_offset)\n)"
        )
        op.execute(f"CREATE INDEX IF NOT EXISTS {decoded}_periode_id_idx ON {decoded} (periode_id)")
        op.execute(DECODED_CURRENT_VIEW.format(table=raw))
        how = (
            f" Maintained by the decode pass from {raw}.data; join back to the bytes with "
            f"JOIN {raw} USING (version, kafka_partition, kafka_offset). Rows that could not "
            "be decoded are in backup_undecodable."
        )
        op.execute(f"COMMENT ON TABLE {decoded} IS {_literal(description + how)}")
        op.execute(
            f"COMMENT ON VIEW {decoded}_current IS "
            + _literal(description + " Serving version only (backup_versions)." + how)
        )
        for relation in (decoded, f"{decoded}_current"):
            for name, _, text in columns:
                op.execute(f"COMMENT ON COLUMN {relation}.{name} IS {_literal(text)}")
