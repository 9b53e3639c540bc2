"""Exactly-once backup of Kafka topics into PostgreSQL.

The engine (everything outside ``orchestration``) has no Dagster import; the Dagster
shell in ``backup_pipeline.orchestration`` and the CLI both call into it.
"""

# The seed's ``InitApplication.CURRENT_VERSION``: bump it (or set BACKUP_VERSION) to
# re-ingest every topic from the beginning into rows of the new version.
CURRENT_VERSION = 1
