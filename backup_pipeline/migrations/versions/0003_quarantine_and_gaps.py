"""Where records that cannot go into their seed table, and offsets that were lost, go.

Revision ID: 0003
Revises: 0002

backup_quarantine keeps such a record raw (key, value, headers, timestamp) with a reason,
written in the same transaction as the batch and the HWM, so nothing stalls and nothing
vanishes. backup_gaps records offset ranges that Kafka deleted (retention) before they
were backed up: data loss made visible.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS backup_quarantine
        (
            version smallint NOT NULL,
            kafka_topic varchar(255) NOT NULL,
            kafka_partition integer NOT NULL,
            kafka_offset bigint NOT NULL,
            reason text NOT NULL,
            record_key bytea,
            kafka_value bytea,
            headers jsonb,
            kafka_timestamp timestamptz,
            kafka_timestamp_type smallint,
            quarantined_at timestamptz NOT NULL DEFAULT now(),
            primary key (version, kafka_topic, kafka_partition, kafka_offset)
        );

        CREATE TABLE IF NOT EXISTS backup_gaps
        (
            version smallint NOT NULL,
            kafka_topic varchar(255) NOT NULL,
            kafka_partition integer NOT NULL,
            first_lost_offset bigint NOT NULL,
            last_lost_offset bigint NOT NULL,
            -- 'retention': deleted after the backup had started on this partition (loss);
            -- 'before_start': already gone when this version began the partition.
            kind text NOT NULL,
            detected_at timestamptz NOT NULL DEFAULT now(),
            primary key (version, kafka_topic, kafka_partition, first_lost_offset),
            CHECK (first_lost_offset <= last_lost_offset)
        );
        """
    )
