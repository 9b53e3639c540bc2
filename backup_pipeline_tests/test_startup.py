"""Start-up stays cheap: heavy libraries load only in the commands that use them.

Timings depend on the machine; which modules a start-up imports does not, so that is what
these pin (measured on 2 cores: `backup-pipeline --help` 0.35 s of CPU, a no-op `backup`
pass 0.54 s; see the commit that made them lazy).
"""

from __future__ import annotations

import subprocess
import sys

from backup_pipeline import migrate
from backup_pipeline_tests.fix_services import make_settings

HEAVY = ("pandas", "alembic", "sqlalchemy", "dagster", "structlog")


def modules_loaded_by(code: str, env: dict[str, str] | None = None) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    ).stdout
    return set(out.split())


def test_the_cli_help_loads_no_heavy_library() -> None:
    code = (
        "from click.testing import CliRunner\n"
        "from backup_pipeline.cli import main\n"
        "result = CliRunner().invoke(main, ['--help'])\n"
        "assert result.exit_code == 0 and 'backup' in result.output, result.output\n"
    )
    loaded = modules_loaded_by(code)
    assert not {name for name in loaded if name.split(".")[0] in HEAVY}


def test_the_head_revision_from_file_names_is_alembics_head() -> None:
    assert migrate.head_from_file_names() == migrate.head_revision()


def test_migrating_an_up_to_date_database_does_not_load_alembic(
    services: dict[str, str], database_url: str
) -> None:
    code = (
        "from backup_pipeline import migrate\n"
        "from backup_pipeline.settings import load_settings\n"
        "before, after = migrate.migrate(load_settings())\n"
        "assert before == after == migrate.head_from_file_names(), (before, after)\n"
    )
    env = {
        "PATH": "",
        "KAFKA_BROKERS": services["KAFKA_BROKERS"],
        "DATABASE_URL": database_url,
    }
    loaded = modules_loaded_by(code, env)
    assert not {name for name in loaded if name.split(".")[0] in ("alembic", "sqlalchemy")}
    # ... and it still reports the revision, as the full path would.
    settings = make_settings(services, database_url)
    head = migrate.head_revision()
    assert migrate.recorded_revision(settings) == head
    assert migrate.migrate(settings) == (head, head)


def test_migrating_an_empty_database_still_applies_every_migration(
    services: dict[str, str], empty_database_url: str
) -> None:
    settings = make_settings(services, empty_database_url)
    assert migrate.recorded_revision(settings) is None
    assert migrate.migrate(settings) == (None, migrate.head_revision())
    assert migrate.recorded_revision(settings) == migrate.head_revision()
