"""The seed's four tables and indexes, adopting them where they already exist.

Revision ID: 0001
Revises:

Every statement is IF NOT EXISTS so that a database created and filled by an earlier
implementation of this backup (with its own migration history, e.g. Flyway's) is adopted
as it is: no row is read or written, and the backup carries on from its HWMs.

One deliberate difference from the seed: the two ``GIN (data bytea_ops)`` indexes are
partial (``WHERE octet_length(data) <= 2700``). With the full index, PostgreSQL refuses any
incompressible value over ~2700 bytes ("index row size ... exceeds maximum 2712"), so a
valid Kafka record would be rejected by an index. Values up to 2700 bytes are indexed
exactly as the seed intends; larger ones are stored but not in that index. An adopted
full index of the same name is replaced by the partial one (an index change only).
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BYTEA_INDEX_LIMIT = 2700

SEED_TABLES = """
CREATE TABLE IF NOT EXISTS bekreftelse_hendelser
(
    version smallint NOT NULL,
    kafka_partition smallint NOT NULL,
    kafka_offset bigint NOT NULL,
    record_key bigint NOT NULL,
    arbeidssoeker_id bigint NOT NULL,
    traceparent varchar(58),
    data jsonb NOT NULL,
    primary key (version, kafka_partition, kafka_offset)
);

CREATE TABLE IF NOT EXISTS bekreftelser
(
    version smallint NOT NULL,
    kafka_partition smallint NOT NULL,
    kafka_offset bigint NOT NULL,
    record_key bigint NOT NULL,
    traceparent varchar(58),
    data bytea NOT NULL,
    primary key (version, kafka_partition, kafka_offset)
);

CREATE TABLE IF NOT EXISTS bekreftelse_paa_vegne_av
(
    version smallint NOT NULL,
    kafka_partition smallint NOT NULL,
    kafka_offset bigint NOT NULL,
    record_key bigint NOT NULL,
    traceparent varchar(58),
    data bytea NOT NULL,
    primary key (version, kafka_partition, kafka_offset)
);

CREATE TABLE IF NOT EXISTS bekreftelse_hwm
(
    version smallint NOT NULL,
    kafka_partition smallint NOT NULL,
    kafka_offset bigint NOT NULL,
    kafka_topic varchar(255) NOT NULL,
    primary key (version, kafka_partition, kafka_topic)
);

CREATE INDEX IF NOT EXISTS bekreftelse_hendelser_data_idx
    ON bekreftelse_hendelser USING GIN (data jsonb_path_ops);
CREATE INDEX IF NOT EXISTS bekreftelse_hendelser_arbeidssoeker_id_idx
    ON bekreftelse_hendelser (arbeidssoeker_id);
"""

# Replace a full (non-partial) seed index with the partial one; create it when absent.
PARTIAL_BYTEA_INDEX = """
DO $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relname = '{index}' AND c.relnamespace = current_schema()::regnamespace
          AND i.indpred IS NULL
    ) THEN
        DROP INDEX {index};
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS {index} ON {table} USING GIN (data bytea_ops)
    WHERE octet_length(data) <= {limit};
"""


def upgrade() -> None:
    # bytea_ops for GIN lives in btree_gin (a trusted extension: the database owner may
    # create it without superuser rights).
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
    op.execute(SEED_TABLES)
    for table in ("bekreftelser", "bekreftelse_paa_vegne_av"):
        op.execute(
            PARTIAL_BYTEA_INDEX.format(
                index=f"{table}_data_idx", table=table, limit=BYTEA_INDEX_LIMIT
            )
        )
