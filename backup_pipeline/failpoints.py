"""Crash injection for the kill tests: SIGKILL this process at a named point.

``BACKUP_PIPELINE_FAILPOINT=<name>:<n>`` kills the process the n-th time ``hit(name)`` runs.
Unset (always, outside tests) it costs one dict lookup per batch.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def hit(name: str) -> None:
    spec = os.environ.get("BACKUP_PIPELINE_FAILPOINT")
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
