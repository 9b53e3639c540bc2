"""Consumer-group positions: the committed offsets of the groups that read each topic.

Revision ID: 0008
Revises: 0007

- consumer_group_positions: per backup version, topic, group and partition, a history of
  the group's committed offset and the group's state. A row is written when the offset or
  the state changes (``seen_at``); while neither changes, each snapshot only moves
  ``last_seen_at`` on, so a group that commits rarely costs no rows and a restore still
  knows how fresh the position is. A restore translates the position as of a time (the
  last row with ``seen_at`` at or before it) into the restored topic's offsets through
  ``restore_offset_map``. History older than BACKUP_POSITIONS_FULL_HISTORY_HOURS is
  thinned to the last row per hour (positions/snapshot.py).

Only a new table: nothing the backup writes is touched.
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS consumer_group_positions
        (
            version smallint NOT NULL,
            kafka_topic varchar(255) NOT NULL,
            group_id text NOT NULL,
            kafka_partition integer NOT NULL,
            -- the offset of the next record the group would read
            committed_offset bigint NOT NULL,
            -- the group's state when seen: stable, empty, preparing_rebalance, ...
            group_state text NOT NULL,
            seen_at timestamptz NOT NULL,
            last_seen_at timestamptz NOT NULL,
            PRIMARY KEY (version, kafka_topic, group_id, kafka_partition, seen_at)
        );
        CREATE INDEX IF NOT EXISTS consumer_group_positions_seen_at_idx
            ON consumer_group_positions (seen_at);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS consumer_group_positions")
