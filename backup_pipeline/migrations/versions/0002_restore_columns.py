"""Additive, nullable columns holding what a restore needs beyond the seed's columns.

Revision ID: 0002
Revises: 0001

The seed's columns are untouched, so every reader of the seed's tables is unaffected;
rows written before this migration simply have NULL here.

- kafka_timestamp / kafka_timestamp_type: the record's timestamp (millisecond precision
  fits timestamptz exactly) and its type (1 = CreateTime, 2 = LogAppendTime).
- headers: all headers, losslessly: a JSON array of [name, base64 value or null] pairs in
  the order they arrived, duplicates included.
- kafka_value (bekreftelse_hendelser only): the value bytes exactly as produced, because
  jsonb normalises whitespace, key order and duplicate keys; the bytea tables already
  hold the exact bytes in ``data``.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TABLES = ("bekreftelse_hendelser", "bekreftelser", "bekreftelse_paa_vegne_av")


def upgrade() -> None:
    for table in TABLES:
        op.execute(
            f"""
            ALTER TABLE {table}
                ADD COLUMN IF NOT EXISTS kafka_timestamp timestamptz,
                ADD COLUMN IF NOT EXISTS kafka_timestamp_type smallint,
                ADD COLUMN IF NOT EXISTS headers jsonb
            """
        )
    op.execute("ALTER TABLE bekreftelse_hendelser ADD COLUMN IF NOT EXISTS kafka_value bytea")
