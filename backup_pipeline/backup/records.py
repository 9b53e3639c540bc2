"""Turn Kafka records into rows of the seed's tables, or into quarantine rows.

Pure functions: no I/O. Anything PostgreSQL would refuse for a seed table is caught here
and sent to quarantine with a reason a person can read, so a bad record never stops the
backup and never vanishes.
"""

from __future__ import annotations

import base64
import functools
import json
import struct
from binascii import b2a_base64
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from backup_pipeline.topics import ValueFormat

TRACEPARENT_HEADER = "traceparent"
TRACEPARENT_MAX_CHARS = 58  # varchar(58) in the seed
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LONG = struct.Struct(">q")  # Kafka LongSerializer: 8 bytes, big-endian, signed


class KafkaMessage(Protocol):
    """The parts of ``confluent_kafka.Message`` the mapping reads."""

    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> bytes | None: ...
    def value(self) -> bytes | None: ...
    def headers(self) -> list[tuple[str, bytes | None]] | None: ...
    def timestamp(self) -> tuple[int, int]: ...


class JsonbWire(bytes):
    """A jsonb value in PostgreSQL's binary wire format: the version byte 1, then JSON text.

    Binary COPY carries no type tags: the server reads each field with the column's own
    receive function. So the writer types these columns as bytea for psycopg, which passes
    the bytes through in C, instead of calling a Python JSON dumper per value (measured:
    that dumper was a large share of a pass's Python time).
    """

    @property
    def json(self) -> bytes:
        return self[1:]


def jsonb_wire(text: bytes) -> JsonbWire:
    return JsonbWire(b"\x01" + text)


@dataclass
class MappedBatch:
    """Rows for the seed table and the quarantine, in offset order, plus counters."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    quarantine: list[tuple[Any, ...]] = field(default_factory=list)
    warnings: int = 0
    # Per partition: (rows, quarantined, warnings)
    per_partition: dict[int, list[int]] = field(default_factory=dict)

    def _count(self, partition: int, index: int) -> None:
        counts = self.per_partition.setdefault(partition, [0, 0, 0])
        counts[index] += 1


def decode_key(key: bytes | None) -> int | None:
    """The signed 64-bit big-endian key written by Kafka's LongSerializer, or None."""
    if key is None or len(key) != 8:
        return None
    return int(_LONG.unpack(key)[0])


@functools.lru_cache(maxsize=1024)
def _json_name(name: str) -> bytes:
    return json.dumps(name).encode()


_NO_HEADERS = JsonbWire(b"\x01[]")


def header_columns(
    headers: list[tuple[str, bytes | None]] | None,
) -> tuple[str | None, bool, JsonbWire]:
    """The columns a record's headers give, in one pass over them (it runs per record):

    - ``traceparent``: the last traceparent header as text, or None;
    - whether a traceparent had to be dropped (not UTF-8, over 58 characters, NUL): a warning;
    - ``headers``: all of them, losslessly (order, duplicates, binary and null values), as
      jsonb in its wire format. The JSON is byte-identical to ``json.dumps([[name, base64
      or None], ...], separators=(",", ":"))``, built by hand (4x faster, measured).
    """
    if not headers:
        return None, False, _NO_HEADERS
    parts = []
    trace_value: bytes | None = None
    for name, value in headers:
        if value is None:
            parts.append(b"[" + _json_name(name) + b",null]")
        else:
            parts.append(b"[" + _json_name(name) + b',"' + b2a_base64(value, newline=False) + b'"]')
        if name == TRACEPARENT_HEADER:
            trace_value = value
    wire = JsonbWire(b"\x01[" + b",".join(parts) + b"]")
    if trace_value is None:
        return None, False, wire
    try:
        text = trace_value.decode("utf-8")
    except UnicodeDecodeError:
        return None, True, wire
    if len(text) > TRACEPARENT_MAX_CHARS or "\x00" in text:
        return None, True, wire
    return text, False, wire


def decode_headers(encoded: Any) -> list[tuple[str, bytes | None]]:
    """Inverse of the headers column (header_columns), for restore and verify; accepts
    the JSON text or parsed JSON."""
    pairs = json.loads(encoded) if isinstance(encoded, bytes | str) else encoded
    return [(name, None if value is None else base64.b64decode(value)) for name, value in pairs]


def kafka_timestamp(timestamp: tuple[int, int]) -> tuple[datetime | None, int | None, bool]:
    """(kafka_timestamp, kafka_timestamp_type, dropped): a timestamp that exists but has no
    datetime (after the year 9999: a producer may set any long) is dropped, a warning."""
    kind, millis = timestamp
    if kind == 0 or millis < 0:  # TIMESTAMP_NOT_AVAILABLE
        return None, None, False
    try:
        return _EPOCH + timedelta(milliseconds=millis), kind, False
    except OverflowError:
        return None, None, True


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_event(value: bytes) -> tuple[int | None, str | None]:
    """(arbeidssoeker_id, None) for a storable JSON event, else (None, reason)."""
    # Fast path for the common case: orjson is stricter than the standard library (it
    # refuses invalid UTF-8, NaN and lone surrogates), so when it accepts the event and
    # finds an integer id the event is storable. Anything else gets the careful verdict.
    try:
        event = orjson.loads(value)
    except orjson.JSONDecodeError:
        event = None
    if isinstance(event, dict) and b"\\u0000" not in value:
        person = event.get("arbeidssoekerId")
        if type(person) is int and BIGINT_MIN <= person <= BIGINT_MAX:
            return person, None
    return _parse_event_carefully(value)


def _contains_nul(node: Any) -> bool:
    if isinstance(node, str):
        return "\x00" in node
    if isinstance(node, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in node.items())
    if isinstance(node, list):
        return any(_contains_nul(v) for v in node)
    return False


def _parse_event_carefully(value: bytes) -> tuple[int | None, str | None]:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"value is not valid UTF-8 ({exc.reason} at byte {exc.start})"
    try:
        event = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        return None, f"value is not valid JSON: {exc}"
    if not isinstance(event, dict):
        return None, f"JSON value is a {type(event).__name__}, not an object"
    # PostgreSQL's jsonb refuses what Python's json accepts in two places. JSON escapes
    # are written with a lowercase u but either case of hex digit.
    if "\\u0000" in text and _contains_nul(event):
        return None, "JSON contains \\u0000, which PostgreSQL jsonb cannot store"
    if "\\ud" in text or "\\uD" in text:
        try:
            json.dumps(event, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None, "JSON contains a lone UTF-16 surrogate escape"
    if "arbeidssoekerId" not in event:
        return None, "JSON event has no arbeidssoekerId"
    person = event["arbeidssoekerId"]
    if type(person) is not int:  # bool is an int subclass; 12.0 and "12" are not ids
        return None, f"arbeidssoekerId is not an integer: {json.dumps(person)[:100]}"
    if not BIGINT_MIN <= person <= BIGINT_MAX:
        return None, "arbeidssoekerId does not fit in bigint"
    return person, None


def quarantine_row(version: int, topic: str, message: KafkaMessage, reason: str) -> tuple[Any, ...]:
    stamp, stamp_type, _ = kafka_timestamp(message.timestamp())
    return (
        version,
        topic,
        message.partition(),
        message.offset(),
        reason,
        message.key(),
        message.value(),
        header_columns(message.headers())[2],
        stamp,
        stamp_type,
    )


def map_messages(
    messages: list[KafkaMessage], value_format: ValueFormat, version: int, topic: str
) -> MappedBatch:
    """Map a batch; every message ends up as exactly one row or one quarantine row.

    This loop runs once per record and is most of a pass's Python time (bench/), so it
    counts with plain dict lookups and converts a timestamp once per distinct value.
    """
    batch = MappedBatch()
    rows, per_partition = batch.rows, batch.per_partition
    is_json = value_format is ValueFormat.JSON_EVENT
    last_timestamp: tuple[int, int] | None = None
    stamp: datetime | None = None
    stamp_type: int | None = None
    stamp_dropped = False
    for message in messages:
        partition = message.partition()
        assert partition is not None
        counts = per_partition.get(partition)
        if counts is None:
            counts = per_partition[partition] = [0, 0, 0]
        key = message.key()
        value = message.value()
        reason = None
        person = None
        record_key = decode_key(key)
        if record_key is None:
            reason = (
                "record key is null"
                if key is None
                else f"record key is {len(key)} bytes, not the 8 of a signed 64-bit long"
            )
        elif value is None:
            reason = "value is null (tombstone)"
        elif is_json:
            person, reason = parse_event(value)
        if reason is not None:
            batch.quarantine.append(quarantine_row(version, topic, message, reason))
            counts[1] += 1
            continue
        trace, dropped, headers = header_columns(message.headers())
        if dropped:
            batch.warnings += 1
            counts[2] += 1
        timestamp = message.timestamp()
        if timestamp != last_timestamp:
            # Records of a burst share their timestamp: reuse the datetime.
            last_timestamp = timestamp
            stamp, stamp_type, stamp_dropped = kafka_timestamp(timestamp)
        if stamp_dropped:
            batch.warnings += 1
            counts[2] += 1
        assert value is not None
        if is_json:
            rows.append(
                (
                    version,
                    partition,
                    message.offset(),
                    record_key,
                    person,
                    trace,
                    jsonb_wire(value),
                    stamp,
                    stamp_type,
                    headers,
                    value,
                )
            )
        else:
            rows.append(
                (
                    version,
                    partition,
                    message.offset(),
                    record_key,
                    trace,
                    value,
                    stamp,
                    stamp_type,
                    headers,
                )
            )
        counts[0] += 1
    return batch


def columns(value_format: ValueFormat) -> tuple[tuple[str, str], ...]:
    """(column, PostgreSQL type) in the order map_messages builds rows, for binary COPY."""
    if value_format is ValueFormat.JSON_EVENT:
        return (
            ("version", "int2"),
            ("kafka_partition", "int2"),
            ("kafka_offset", "int8"),
            ("record_key", "int8"),
            ("arbeidssoeker_id", "int8"),
            ("traceparent", "varchar"),
            ("data", "jsonb"),
            ("kafka_timestamp", "timestamptz"),
            ("kafka_timestamp_type", "int2"),
            ("headers", "jsonb"),
            ("kafka_value", "bytea"),
        )
    return (
        ("version", "int2"),
        ("kafka_partition", "int2"),
        ("kafka_offset", "int8"),
        ("record_key", "int8"),
        ("traceparent", "varchar"),
        ("data", "bytea"),
        ("kafka_timestamp", "timestamptz"),
        ("kafka_timestamp_type", "int2"),
        ("headers", "jsonb"),
    )


QUARANTINE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("version", "int2"),
    ("kafka_topic", "varchar"),
    ("kafka_partition", "int4"),
    ("kafka_offset", "int8"),
    ("reason", "text"),
    ("record_key", "bytea"),
    ("kafka_value", "bytea"),
    ("headers", "jsonb"),
    ("kafka_timestamp", "timestamptz"),
    ("kafka_timestamp_type", "int2"),
)
