"""Faults a pass can outlive: a lost connection is retried, a refusal is reported.

A pass is idempotent (it resumes from the HWMs committed by its batches), so running it
again after PostgreSQL or Kafka went away for a moment is always safe. What is *not*
retried: a lock or statement timeout, a refused row, a misconfiguration -- trying again
would only wait behind the same lock or hit the same error.
"""

from __future__ import annotations

import logging
import os

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from backup_pipeline.errors import BackupError, ConfigError, KafkaUnavailableError

log = logging.getLogger(__name__)

# Attempts per pass (1 = no retry) and the longest a statement of the pass waits for a
# table lock held by someone else. Read here rather than in Settings so that this module
# stays self-contained (Settings ignores unknown variables).
ATTEMPTS_ENV = "BACKUP_PASS_ATTEMPTS"
LOCK_TIMEOUT_ENV = "BACKUP_LOCK_TIMEOUT_SECONDS"
DEFAULT_PASS_ATTEMPTS = 3
DEFAULT_LOCK_TIMEOUT_SECONDS = 60.0


class DatabaseUnavailableError(BackupError):
    """PostgreSQL could not be reached, or the pass's connection to it was lost."""


# Faults of the connection, not of the data: the next attempt may well succeed.
TRANSIENT = (DatabaseUnavailableError, KafkaUnavailableError)


def pass_attempts() -> int:
    return int(_number(ATTEMPTS_ENV, DEFAULT_PASS_ATTEMPTS, minimum=1))


def lock_timeout_seconds() -> float:
    """0 disables the bound (then only a statement_timeout, if any, ends a lock wait)."""
    return _number(LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT_SECONDS, minimum=0)


def _number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"invalid configuration: {name}: expected a number") from None
    if value < minimum:
        raise ConfigError(f"invalid configuration: {name}: must be at least {minimum:g}")
    return value


def pass_retrying(what: str, attempts: int, max_wait: float = 20.0) -> Retrying:
    """Retry ``TRANSIENT`` errors up to ``attempts`` times, waiting 2, 4, 8... seconds."""

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
