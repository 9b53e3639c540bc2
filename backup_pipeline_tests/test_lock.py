"""requirements.lock agrees with pyproject.toml: a dependency added without `make lock`
fails here in the fast tier, not on a fresh machine."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from backup_pipeline_tests.support import REPO

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+) \\$")


def locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) for every package in the lock."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if match := PIN.match(line):
            name = canonicalize_name(match[1])
            pins[name] = (match[2], 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    texts = [
        *project["project"]["dependencies"],
        *project["project"]["optional-dependencies"]["dev"],
        *project["dependency-groups"]["build"],
    ]
    return [Requirement(text) for text in texts]


@pytest.mark.parametrize("requirement", declared(), ids=str)
def test_every_declared_dependency_is_locked_at_a_version_it_allows(
    requirement: Requirement,
) -> None:
    pins = locked()
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{requirement.name} is not in requirements.lock: run `make lock`"
    version, hashes = pins[name]
    assert requirement.specifier.contains(version, prereleases=True), (
        f"requirements.lock has {requirement.name}=={version}, pyproject wants "
        f"{requirement.specifier}: run `make lock`"
    )
    assert hashes >= 1


def test_every_locked_package_has_hashes_and_the_tools_ci_needs_are_there() -> None:
    pins = locked()
    assert all(hashes >= 1 for _, hashes in pins.values())
    # Another engineer may make these direct dependencies; they must stay installable.
    assert {"rich", "tqdm", "ruff", "mypy", "setuptools", "wheel"} <= set(pins)
