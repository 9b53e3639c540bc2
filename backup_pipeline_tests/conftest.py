"""The suite's hooks; its fixtures are in the plugins below (psycopg's tests/fix_*.py):
fix_services (Kafka and PostgreSQL from dev/services), fix_db, fix_kafka, fix_dagster,
fix_security (TLS, roles, the CLI as a subprocess).

Tiers: a test gets the `services` marker from the fixtures it uses (any that reach Kafka
or PostgreSQL) and `browser` when its module drives Chromium, so nobody has to remember
to mark one; `make test-fast` runs the rest (`-m "not services and not browser"`).
"""

from __future__ import annotations

import pytest

from dev.harness import waits

pytest_plugins = [
    "backup_pipeline_tests.fix_services",
    "backup_pipeline_tests.fix_db",
    "backup_pipeline_tests.fix_kafka",
    "backup_pipeline_tests.fix_dagster",
    "backup_pipeline_tests.fix_security",
]

# Fixtures that start or reach the real services: a test whose fixture closure holds one
# of them is in the `services` tier.
SERVICE_FIXTURES = frozenset({"services", "fault_services"})
BROWSER_MODULE = "backup_pipeline_tests.browser"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # The pytest timeout grows with the waits it bounds (BACKUP_TEST_TIME_SCALE,
    # dev/harness/waits.py); before pytest-timeout reads it. An explicit --timeout is
    # taken as given.
    if config.getoption("timeout", None) is None and config.getini("timeout"):
        config.option.timeout = float(config.getini("timeout")) * waits.TIME_SCALE


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> None:
    # pytest-timeout's clock covers setup, call and teardown; waits.wait_until ends a wait
    # before it runs out, with a message naming what it waited for.
    marker = item.get_closest_marker("timeout")
    timeout = marker.args[0] if marker and marker.args else item.config.getoption("timeout")
    waits.start_test_clock(float(timeout) if timeout else None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # A test's own @pytest.mark.timeout(seconds) is in idle-machine seconds too.
        marker = item.get_closest_marker("timeout")
        if marker and marker.args:
            item.add_marker(pytest.mark.timeout(waits.scaled(float(marker.args[0]))), append=False)
        if SERVICE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
        module = getattr(item, "module", None)
        if module is not None and any(
            getattr(value, "__module__", None) == BROWSER_MODULE for value in vars(module).values()
        ):
            item.add_marker(pytest.mark.browser)
