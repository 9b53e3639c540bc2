"""Faults a pass can outlive: a lost connection is retried, a refusal is reported.

A pass is idempotent (it resumes from the HWMs committed by its batches), so running it
again after PostgreSQL or Kafka went away for a moment is always safe. What is *not*
retried: a lock or statement timeout, a refused row, a misconfiguration -- trying again
would only wait behind the same lock or hit the same error.
"""

from __future__ import annotations

import logging

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from backup_pipeline.errors import BackupError, KafkaUnavailableError

log = logging.getLogger(__name__)


class DatabaseUnavailableError(BackupError):
    """PostgreSQL could not be reached, or the pass's connection to it was lost."""


# Faults of the connection, not of the data: the next attempt may well succeed.
TRANSIENT = (DatabaseUnavailableError, KafkaUnavailableError)


def pass_retrying(what: str, attempts: int, max_wait: float = 20.0) -> Retrying:
    """Retry ``TRANSIENT`` errors up to ``attempts`` times (BACKUP_PASS_ATTEMPTS, from the
    caller's Settings), waiting 2, 4, 8... seconds."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.warning(
            "%s: attempt %d of %d failed (%s); retrying in %.0fs",
            what,
            state.attempt_number,
            attempts,
            exc,
            wait,
        )

    return Retrying(
        retry=retry_if_exception_type(TRANSIENT),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=1, min=2, max=max_wait),
        before_sleep=before_sleep,
        reraise=True,
    )
