"""Backup: one pass of one topic and one version, Kafka -> PostgreSQL, exactly once.

Reading a bounded range (source), records to rows (records), rows and HWMs in one
transaction per batch (writer, writer_lanes; the HWM store is ``backup_pipeline.hwm``), the
pass itself (pass_) and what it reports (report, accounting).
"""
