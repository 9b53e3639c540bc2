"""What each Avro table decodes into: record, vendored writer schemas, typed columns.

The column descriptions come from the doc comments of NAV's ``.avdl`` files
(navikt/paw-arbeidssokerregisteret-api, bekreftelsesmelding-schema and
bekreftelse-paavegneav-schema), translated. Migration 0006 writes the same text into the
database as ``COMMENT ON COLUMN`` (a test keeps the two equal); Dagster shows it as the
decoded assets' column schema.
"""

from __future__ import annotations

from dataclasses import dataclass

# Columns every decoded table starts with: the raw row's key (same names as the raw
# table, so ``JOIN ... USING (version, kafka_partition, kafka_offset)`` leads to the bytes)
# and the schema id of the frame.
KEY_COLUMNS = ("version", "kafka_partition", "kafka_offset")


@dataclass(frozen=True)
class Column:
    name: str
    pg_type: str
    # Dotted Avro field path ('' for columns that are not from the Avro body).
    avro_path: str
    description: str


@dataclass(frozen=True)
class AvroTable:
    raw_table: str
    decoded_table: str
    record_name: str  # full name of the top-level record
    # Vendored writer schemas (files in decode/schemas/), newest first: the order they
    # are tried in when no registry knows a schema id.
    vendored: tuple[str, ...]
    # enum full name -> symbols a reader knows; a symbol outside them is undecodable.
    enums: dict[str, tuple[str, ...]]
    columns: tuple[Column, ...]
    description: str
    # Whether the record holds a union of records (read with their names to tell them apart).
    record_union: bool = False

    @property
    def current_view(self) -> str:
        return f"{self.decoded_table}_current"

    @property
    def value_columns(self) -> tuple[Column, ...]:
        return self.columns[4:]


_KEY = (
    Column("version", "smallint", "", "Backup version of the raw row (see backup_versions)."),
    Column("kafka_partition", "smallint", "", "Kafka partition of the raw row."),
    Column("kafka_offset", "bigint", "", "Kafka offset of the raw row."),
    Column(
        "schema_id",
        "integer",
        "",
        "Confluent schema id from the value's frame (bytes 1-4); the writer schema is kept "
        "in backup_schemas.",
    ),
)

_LOESNING = (
    "UKJENT_VERDI",
    "ARBEIDSSOEKERREGISTERET",
    "DAGPENGER",
    "FRISKMELDT_TIL_ARBEIDSFORMIDLING",
)
_BRUKER_TYPE = ("UKJENT_VERDI", "UDEFINERT", "VEILEDER", "SYSTEM", "SLUTTBRUKER")
_PERIODE = (
    "UUID of the job-seeker period (arbeidssøkerperiode) the message concerns, as on the "
    "Periode topic."
)

BEKREFTELSER = AvroTable(
    raw_table="bekreftelser",
    decoded_table="bekreftelser_decoded",
    record_name="no.nav.paw.bekreftelse.melding.v1.Bekreftelse",
    vendored=("bekreftelse-v1.avsc", "bekreftelse-pre-2025-03-07.avsc"),
    enums={
        "no.nav.paw.bekreftelse.melding.v1.vo.Bekreftelsesloesning": _LOESNING,
        "no.nav.paw.bekreftelse.melding.v1.vo.BrukerType": _BRUKER_TYPE,
    },
    columns=(
        *_KEY,
        Column("periode_id", "uuid", "periodeId", _PERIODE),
        Column(
            "bekreftelsesloesning",
            "text",
            "bekreftelsesloesning",
            "Which system/solution sent the confirmation (enum symbol: "
            + ", ".join(_LOESNING)
            + ").",
        ),
        Column(
            "bekreftelse_id",
            "uuid",
            "id",
            "Unique id of the message; duplicates are network retries and can be ignored.",
        ),
        Column(
            "svar_sendt_inn_av_tidspunkt",
            "timestamptz",
            "svar.sendtInnAv.tidspunkt",
            "When the answer was submitted (timestamp-millis).",
        ),
        Column(
            "bruker_type",
            "text",
            "svar.sendtInnAv.utfoertAv.type",
            "Kind of user who submitted the answer (enum symbol: " + ", ".join(_BRUKER_TYPE) + ").",
        ),
        Column(
            "bruker_id",
            "text",
            "svar.sendtInnAv.utfoertAv.id",
            "The submitting user's id: national id number (fødselsnummer/D-nummer) for an "
            "end user, NAV ident for a case worker, system name (APP:VERSION) for a system.",
        ),
        Column(
            "bruker_sikkerhetsnivaa",
            "text",
            "svar.sendtInnAv.utfoertAv.sikkerhetsnivaa",
            "Security level used to authenticate the user, as ISSUER:ACR (e.g. "
            "tokenx:Level4). NULL when not given or written before 2025-03-07.",
        ),
        Column(
            "svar_sendt_inn_av_kilde",
            "text",
            "svar.sendtInnAv.kilde",
            "Name of the system that made the change or was used to make it.",
        ),
        Column(
            "svar_sendt_inn_av_aarsak",
            "text",
            "svar.sendtInnAv.aarsak",
            "Reason for the message, e.g. 'Bruker sendte inn dagpengemeldekort'.",
        ),
        Column(
            "gjelder_fra",
            "timestamptz",
            "svar.gjelderFra",
            "Start of the period the confirmation covers (timestamp-millis).",
        ),
        Column(
            "gjelder_til",
            "timestamptz",
            "svar.gjelderTil",
            "End of the period the confirmation covers (timestamp-millis).",
        ),
        Column(
            "har_jobbet_i_denne_perioden",
            "boolean",
            "svar.harJobbetIDennePerioden",
            "Answer: the person has worked in this period.",
        ),
        Column(
            "vil_fortsette_som_arbeidssoeker",
            "boolean",
            "svar.vilFortsetteSomArbeidssoeker",
            "Answer: the person wants to continue as a registered job seeker.",
        ),
    ),
    description="Decoded bekreftelser (confirmations that a person is still a job seeker), "
    "one row per raw row of bekreftelser.",
)

PAA_VEGNE_AV = AvroTable(
    raw_table="bekreftelse_paa_vegne_av",
    decoded_table="bekreftelse_paa_vegne_av_decoded",
    record_name="no.nav.paw.bekreftelse.paavegneav.v1.PaaVegneAv",
    vendored=("paavegneav-v1.avsc", "paavegneav-pre-2025-03-26.avsc"),
    enums={"no.nav.paw.bekreftelse.paavegneav.v1.vo.Bekreftelsesloesning": _LOESNING},
    columns=(
        *_KEY,
        Column("periode_id", "uuid", "periodeId", _PERIODE),
        Column(
            "bekreftelsesloesning",
            "text",
            "bekreftelsesloesning",
            "Which system/solution sends confirmations on the person's behalf (enum "
            "symbol: " + ", ".join(_LOESNING) + ").",
        ),
        Column(
            "handling",
            "text",
            "handling",
            "Which branch of the handling union: 'Start' (the system starts sending "
            "confirmations on the person's behalf for the period) or 'Stopp' (it stops).",
        ),
        Column(
            "interval_ms",
            "bigint",
            "handling.Start.intervalMS",
            "Start only: how often the system will send confirmations, in milliseconds "
            "(a hint; the register does nothing when it expires). NULL for Stopp.",
        ),
        Column(
            "grace_ms",
            "bigint",
            "handling.Start.graceMS",
            "Start only: grace period in milliseconds after the interval before the "
            "system stops on its own; used to detect dead clients. NULL for Stopp.",
        ),
        Column(
            "frist_brutt",
            "boolean",
            "handling.Stopp.fristBrutt",
            "Stopp only: the stop is because the person missed the deadline in the "
            "external system. NULL for Start, and for Stopp written before 2025-03-26 "
            "(then an empty record).",
        ),
    ),
    description="Decoded bekreftelse_paa_vegne_av (a system starts or stops confirming "
    "on a person's behalf), one row per raw row of bekreftelse_paa_vegne_av.",
    record_union=True,
)

AVRO_TABLES: tuple[AvroTable, ...] = (BEKREFTELSER, PAA_VEGNE_AV)


def avro_table(name: str) -> AvroTable:
    """By raw or decoded table name."""
    for table in AVRO_TABLES:
        if name in (table.raw_table, table.decoded_table):
            return table
    known = ", ".join(t.raw_table for t in AVRO_TABLES)
    raise KeyError(f"unknown Avro table {name!r}; known: {known}")
