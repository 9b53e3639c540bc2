"""Verify: compare a backup with a topic (compare), merge-joining both sides record by
record (merge) through digests of records (digest) read from the live or restored topic
(topic); what it found (report).
"""
