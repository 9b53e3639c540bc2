"""Backup: one pass of one topic and one version, Kafka -> PostgreSQL, exactly once.

Reading a bounded range (source), records to rows (records), rows and HWMs in one
transaction per batch (writer, writer_lanes; the HWM store is ``backup_pipeline.hwm``), the
pass and the follow loop (pass_, given its PassOptions: options), the pass with connections
from settings, retried (run), and what it reports (report, accounting).
"""
