"""The import contracts in pyproject.toml name every package of backup_pipeline."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "backup_pipeline"
# Not imported by the engine: Alembic's scripts, loaded from their files by migrate.py.
NOT_MODULES = {"migrations"}


def _contracts() -> list[dict[str, Any]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(config["tool"]["importlinter"]["contracts"])


def _top_level() -> set[str]:
    names = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    names |= {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    return names - NOT_MODULES


def test_every_package_has_a_layer() -> None:
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    named = {name for line in layers["layers"] for name in re.split(r"[|:]", line)}
    assert {n.strip() for n in named} == _top_level()


def test_every_package_is_in_the_forbidden_contracts_but_the_ones_allowed() -> None:
    allowed = {
        "Only the Dagster shell (orchestration, definitions) imports Dagster": {
            "orchestration",
            "definitions",
        },
        "The engine never imports its shells (Dagster's orchestration, the CLI)": {
            "orchestration",
            "definitions",
            "cli",
        },
        "Only analysts.py imports pandas (the analysts' DataFrames, never the hot path)": {
            "analysts"
        },
    }
    forbidden = {c["name"]: c for c in _contracts() if c["type"] == "forbidden"}
    assert set(forbidden) == set(allowed)
    for name, contract in forbidden.items():
        sources = {m.removeprefix("backup_pipeline.") for m in contract["source_modules"]}
        assert sources == _top_level() - allowed[name], name
