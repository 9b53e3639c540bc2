"""Bookkeeping of restores: runs, per-partition checkpoints and the offset map.

Revision ID: 0004
Revises: 0003

- restore_runs: one row per restore (what was asked, into which topic, how it ended). The
  selection is stored so that an interrupted run is resumed with exactly the same filters.
- restore_progress: per run and partition, the checkpoint: the last source offset whose
  record Kafka acknowledged, and the target offset the next record will get. It is written
  from delivery reports in the same transaction as the offset map rows. Records delivered
  after the last checkpoint (a crash between the acknowledgement and the commit) are found
  again in the target topic from ``next_target_offset`` on when the run is resumed, so a
  resume never produces a record twice.
- restore_offset_map: source partition/offset -> target partition/offset of every restored
  record, so consumers of the restored topic can find their place again and verify can map
  restored records back to the backup.

Only new tables: nothing the backup writes is touched.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE IF NOT EXISTS restore_runs
        (
            run_id bigserial PRIMARY KEY,
            version smallint NOT NULL,
            source_table varchar(63) NOT NULL,
            source_topic varchar(255) NOT NULL,
            target_topic varchar(255) NOT NULL,
            selection jsonb NOT NULL,
            origin_headers boolean NOT NULL,
            -- running: in progress or crashed (resumable); stopped: ended early on request
            -- (resumable); completed; failed: Kafka refused a record (resumable once fixed).
            status text NOT NULL DEFAULT 'running'
                CHECK (status IN ('running', 'stopped', 'completed', 'failed')),
            error text,
            started_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            finished_at timestamptz
        );
        CREATE INDEX IF NOT EXISTS restore_runs_target_topic_idx
            ON restore_runs (target_topic);

        CREATE TABLE IF NOT EXISTS restore_progress
        (
            run_id bigint NOT NULL REFERENCES restore_runs ON DELETE CASCADE,
            kafka_partition integer NOT NULL,
            -- the target partition's end offset when the run began
            first_target_offset bigint NOT NULL,
            -- last source offset acknowledged by Kafka and recorded; -1 = none yet
            last_source_offset bigint NOT NULL DEFAULT -1,
            next_target_offset bigint NOT NULL,
            restored bigint NOT NULL DEFAULT 0,
            not_exact bigint NOT NULL DEFAULT 0,
            quarantined bigint NOT NULL DEFAULT 0,
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (run_id, kafka_partition)
        );

        CREATE TABLE IF NOT EXISTS restore_offset_map
        (
            run_id bigint NOT NULL REFERENCES restore_runs ON DELETE CASCADE,
            source_partition integer NOT NULL,
            source_offset bigint NOT NULL,
            target_partition integer NOT NULL,
            target_offset bigint NOT NULL,
            PRIMARY KEY (run_id, source_partition, source_offset)
        );
        CREATE INDEX IF NOT EXISTS restore_offset_map_target_idx
            ON restore_offset_map (run_id, target_partition, target_offset);
        """
    )
