"""The restore selection as the CLI and Dagster build it: one parser, one builder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from backup_pipeline.errors import RestoreError
from backup_pipeline.selection import Selection, restore_time


def test_a_time_without_a_zone_is_utc_and_a_zone_is_kept() -> None:
    assert restore_time("2026-01-15T10:00:00") == datetime(2026, 1, 15, 10, tzinfo=UTC)
    assert restore_time("2026-01-15") == datetime(2026, 1, 15, tzinfo=UTC)
    oslo_winter = timezone(timedelta(hours=1))
    assert restore_time("2026-01-15T11:00:00+01:00") == datetime(
        2026, 1, 15, 11, tzinfo=oslo_winter
    )
    assert restore_time("2026-01-15T10:00:00Z") == datetime(2026, 1, 15, 10, tzinfo=UTC)


def test_a_bad_time_is_one_line_naming_the_option() -> None:
    with pytest.raises(RestoreError, match=r"^--since 'yesterday': expected an ISO-8601 time"):
        restore_time("yesterday", "--since")


def test_the_cli_and_the_restore_job_build_the_same_selection() -> None:
    # The CLI's options (tuples, parsed offsets) and restore_job's config (lists, offsets
    # keyed by text) for the same choice.
    from_cli = Selection.of(
        partitions=(2,),
        offsets={0: (5, None)},
        since="2026-01-15T10:00:00",
        until="2026-01-15T12:00:00+01:00",
        record_keys=(-1,),
        arbeidssoeker_ids=(),
        include_quarantined=True,
    )
    from_dagster = Selection.of(
        partitions=[2],
        offsets={"0": [5, None]},
        since="2026-01-15T10:00:00",
        until="2026-01-15T12:00:00+01:00",
        record_keys=[-1],
        arbeidssoeker_ids=None,
        include_quarantined=True,
    )
    assert from_cli == from_dagster
    assert from_cli.since == datetime(2026, 1, 15, 10, tzinfo=UTC)
    assert from_cli.until == datetime(2026, 1, 15, 11, tzinfo=UTC)
    assert from_cli.keys == (b"\xff" * 8,)
    assert from_cli.arbeidssoeker_ids is None
    # Nothing given: everything but quarantine.
    assert Selection.of() == Selection()
