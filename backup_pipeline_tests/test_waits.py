"""The test suite's own waits: one scale factor, never past a test's timeout."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from dev.harness import waits


@pytest.fixture
def own_clock() -> Iterator[None]:
    """Lets a test move its wait budget, and puts the real one back afterwards."""
    saved = waits._test_deadline
    yield
    waits._test_deadline = saved


def test_wait_until_returns_what_the_condition_found() -> None:
    answers = iter([None, 0, "", "found"])
    assert waits.wait_until(lambda: next(answers), 5, "an answer", interval=0) == "found"


def test_wait_until_names_what_it_waited_for_when_time_runs_out() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"waiting for the moon: timed out after"):
        waits.wait_until(lambda: False, 0.1 / waits.TIME_SCALE, "the moon", interval=0.01)
    assert time.monotonic() - started < 5


def test_a_wait_longer_than_the_test_has_left_ends_before_the_tests_timeout(
    own_clock: None,
) -> None:
    waits.start_test_clock(waits.TEARDOWN_MARGIN_SECONDS + 0.2)
    started = time.monotonic()
    with pytest.raises(AssertionError, match="before the test's own timeout"):
        waits.wait_until(lambda: False, 3600, "something slow", interval=0.01)
    assert time.monotonic() - started < 5
    assert waits.bounded(3600) <= 0.2


def test_the_pytest_timeout_and_every_wait_follow_one_scale_factor(
    request: pytest.FixtureRequest,
) -> None:
    assert request.config.getoption("timeout") == 300 * waits.TIME_SCALE
    code = "from dev.harness import waits; print(waits.scaled(3), waits.bounded(4))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"BACKUP_TEST_TIME_SCALE": "2.5", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split() == ["7.5", "10.0"]


def test_a_bad_scale_factor_stops_the_run_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import dev.harness.waits"],
        env={"BACKUP_TEST_TIME_SCALE": "fast", "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "BACKUP_TEST_TIME_SCALE must be a number, not 'fast'"
