"""Crash injection for the kill tests: SIGKILL this process at a named point.

``BACKUP_PIPELINE_FAILPOINT=<name>:<n>`` kills the process the n-th time ``hit(name)`` runs
(counted over all writer connections of the process).
Unset (always, outside tests) it costs one environment lookup per batch. Read through
Settings (its pattern: ``<name>[:<n>]``) each time, so a test may set it in-process.
"""

from __future__ import annotations

import os
import signal
import threading

from backup_pipeline.settings import env_setting

_hits: dict[str, int] = {}
_lock = threading.Lock()  # writer threads of several connections hit the same points


def hit(name: str) -> None:
    spec = env_setting("backup_pipeline_failpoint", str)
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        reached = _hits[name] >= int(count or 1)
    if reached:
        os.kill(os.getpid(), signal.SIGKILL)
