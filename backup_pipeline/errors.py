"""Errors a person is meant to read: one line, names what to fix, no secrets."""


class BackupError(Exception):
    """Base class for errors the CLI and Dagster show without a stack trace."""


class ConfigError(BackupError):
    """A setting is missing or invalid; the message names the environment variable."""


class ConcurrentWriterError(BackupError):
    """Another pass holds the writer lock for the same (topic, version)."""


class KafkaUnavailableError(BackupError):
    """Kafka could not be reached or did not answer in time."""


class RestoreError(BackupError):
    """A restore was refused or could not go on; the message says why and what to do."""


class UnsupportedDagsterError(BackupError):
    """Code that reads or deletes Dagster's internal tables met a Dagster it was not made for."""
