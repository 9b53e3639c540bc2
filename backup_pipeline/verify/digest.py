"""Digests of a record's key, value and headers, so two records compare by a few bytes."""

from __future__ import annotations

import contextlib
import hashlib
import json

from backup_pipeline.backup.records import TRACEPARENT_HEADER
from backup_pipeline.readback import Headers


def _feed(h: hashlib._Hash, data: bytes | None) -> None:
    # Length-prefixed with a null marker, so (b"ab", b"c") and (b"a", b"bc") differ and
    # a null value differs from an empty one.
    if data is None:
        h.update(b"\x00")
        return
    h.update(b"\x01" + len(data).to_bytes(8, "big"))
    h.update(data)


def digest(key: bytes | None, value: bytes | None, headers: Headers) -> bytes:
    """SHA-256 of key, value and every header in order (names and values)."""
    h = hashlib.sha256()
    _feed(h, key)
    _feed(h, value)
    h.update(len(headers).to_bytes(4, "big"))
    for name, header_value in headers:
        _feed(h, name.encode("utf-8"))
        _feed(h, header_value)
    return h.digest()


def legacy_digest(
    key: bytes | None, value: bytes | None, headers: Headers, *, json_value: bool
) -> bytes:
    """What a row written before the headers/kafka_value columns can still vouch for.

    Such a row holds the key, the last traceparent and, for JSON, PostgreSQL's jsonb
    rendering of the value: compare the JSON by meaning and the headers by traceparent.
    """
    if json_value and value is not None:
        with contextlib.suppress(ValueError):  # not JSON after all: compare the bytes
            value = json.dumps(
                json.loads(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode("utf-8")
    trace = [(name, v) for name, v in headers if name == TRACEPARENT_HEADER][-1:]
    return digest(key, value, trace)
