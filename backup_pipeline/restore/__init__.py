"""Restore: backed-up records of one version written back to Kafka, exactly, resumably.

The run (run) restores its partitions one after the other (partitions) and says what it
did (report); the target topic's checks (target_topic) and the runs' bookkeeping in
PostgreSQL (bookkeeping). What restore shares with verify is in ``backup_pipeline.readback``.
"""
