"""Every wait in a test derives from one scale factor, and none outlives the test's timeout.

``BACKUP_TEST_TIME_SCALE`` (default 1) multiplies every wait written with ``scaled`` or
``wait_until`` and the pytest timeout (backup_pipeline_tests/conftest.py), so a slow or
busy machine gets ``BACKUP_TEST_TIME_SCALE=3 make test`` instead of edits to individual
tests. bench/ and soak/ use the same waits through the harness (dev/harness).

``wait_until`` polls a condition; it never waits past the running test's own pytest
timeout (less a margin for teardown): a wait that would outlive it fails with a message
naming what it waited for, instead of pytest-timeout killing the test mid-wait.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def _scale_from_env() -> float:
    raw = os.environ.get("BACKUP_TEST_TIME_SCALE", "").strip() or "1"
    try:
        scale = float(raw)
    except ValueError:
        raise SystemExit(f"BACKUP_TEST_TIME_SCALE must be a number, not {raw!r}") from None
    if scale <= 0:
        raise SystemExit("BACKUP_TEST_TIME_SCALE must be above 0")
    return scale


TIME_SCALE = _scale_from_env()
# Left for fixtures' teardown (stopping servers, dropping databases) after a failed wait.
TEARDOWN_MARGIN_SECONDS = 15.0

# When the running test's pytest timeout expires (monotonic clock); set by conftest.py.
_test_deadline: float | None = None


def scaled(seconds: float) -> float:
    """A wait or timeout of a test, in seconds on an idle machine, scaled for this one."""
    return seconds * TIME_SCALE


def start_test_clock(timeout: float | None) -> None:
    """conftest.py: a test starts whose pytest timeout is ``timeout`` seconds (None: none)."""
    global _test_deadline
    _test_deadline = time.monotonic() + timeout if timeout else None


def seconds_left() -> float | None:
    """How long a wait may still last before the test's own timeout (less the margin)."""
    if _test_deadline is None:
        return None
    return _test_deadline - TEARDOWN_MARGIN_SECONDS - time.monotonic()


def bounded(seconds: float) -> float:
    """A blocking wait's timeout (``communicate``, ``join``, ``result``): ``seconds`` scaled,
    but never past the test's own timeout."""
    left = seconds_left()
    limit = scaled(seconds)
    return limit if left is None else max(0.0, min(limit, left))


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    *,
    interval: float = 0.05,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that.

    ``timeout`` is in idle-machine seconds (it is scaled here). Fails with ``what`` (and
    ``describe()``, e.g. a log tail) when it runs out, or when the test's own timeout would
    come first.
    """
    limit = scaled(timeout)
    left = seconds_left()
    clipped = left is not None and left < limit
    if left is not None:
        limit = max(0.0, min(limit, left))
    deadline = time.monotonic() + limit
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            reason = (
                f"gave up after {limit:.0f}s, before the test's own timeout"
                if clipped
                else f"timed out after {limit:.0f}s (BACKUP_TEST_TIME_SCALE={TIME_SCALE:g})"
            )
            detail = f"\n{describe()}" if describe else ""
            raise AssertionError(f"waiting for {what}: {reason}{detail}")
        time.sleep(interval)
