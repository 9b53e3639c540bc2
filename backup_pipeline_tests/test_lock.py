"""The locks agree with pyproject.toml and with each other: a dependency added without
`make lock` fails here in the fast tier, not on a fresh machine.

requirements.lock is what the service needs (the Docker image installs it);
requirements-dev.lock adds the dev extras under the very same pins (a clone and CI).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dev.harness.processes import REPO

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==(\S+) \\$")
RUNTIME_LOCK = REPO / "requirements.lock"
DEV_LOCK = REPO / "requirements-dev.lock"


def locked(lock: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, hashes) for every package in ``lock``."""
    pins: dict[str, tuple[str, frozenset[str]]] = {}
    name = ""
    for line in lock.read_text().splitlines():
        if match := PIN.match(line):
            name = canonicalize_name(match[1])
            pins[name] = (match[2], frozenset())
        elif (text := line.strip()).startswith("--hash=sha256:") and name:
            version, hashes = pins[name]
            pins[name] = (version, hashes | {text.removesuffix(" \\")})
    return pins


def declared(*, dev: bool) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    texts = [
        *project["project"]["dependencies"],
        *(project["project"]["optional-dependencies"]["dev"] if dev else []),
        *project["dependency-groups"]["build"],
    ]
    return [Requirement(text) for text in texts]


@pytest.mark.parametrize(
    ("lock", "requirement"),
    [(RUNTIME_LOCK, r) for r in declared(dev=False)] + [(DEV_LOCK, r) for r in declared(dev=True)],
    ids=lambda value: value.name if isinstance(value, Path) else str(value),
)
def test_every_declared_dependency_is_locked_at_a_version_it_allows(
    lock: Path, requirement: Requirement
) -> None:
    pins = locked(lock)
    name = canonicalize_name(requirement.name)
    assert name in pins, f"{requirement.name} is not in {lock.name}: run `make lock`"
    version, hashes = pins[name]
    assert requirement.specifier.contains(version, prereleases=True), (
        f"{lock.name} has {requirement.name}=={version}, pyproject wants "
        f"{requirement.specifier}: run `make lock`"
    )
    assert hashes


def test_the_dev_lock_installs_exactly_the_runtime_pins_and_the_image_no_dev_tools() -> None:
    runtime, dev = locked(RUNTIME_LOCK), locked(DEV_LOCK)
    assert all(hashes for _, hashes in [*runtime.values(), *dev.values()])
    differing = {name for name, pin in runtime.items() if dev.get(name) != pin}
    assert not differing, f"the locks disagree on {sorted(differing)}: run `make lock`"
    # Another engineer may make these direct dependencies; they must stay installable.
    assert {"rich", "tqdm", "setuptools", "wheel"} <= set(runtime)
    assert {"pytest", "pytest-xdist", "ruff", "mypy", "playwright"} <= set(dev)
    assert not {"pytest", "ruff", "mypy", "playwright"} & set(runtime)
