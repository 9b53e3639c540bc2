"""Verify: compare a backup with a topic (compare), through digests of records (digest)
read from the live or restored topic (topic).
"""
