"""Confluent-framed Avro value -> one typed row, or the reason it cannot be one.

Values are decoded with their **writer schema alone** (fastavro ``schemaless_reader``
without a reader schema) and flattened by field name. A reader schema would fill fields an
old writer did not have with the reader's defaults (``fristBrutt = false`` for a Stopp
written before the field existed) and map an enum symbol it does not know to the enum's
default (``UKJENT_VERDI``): both would show analysts a value the data never held. Here a
missing field is NULL and an unknown symbol is an undecodable row with that reason, which
decodes once a schema that knows the symbol is vendored (``decode --retry-undecodable``).

A decode counts only if it consumes every byte of the value: a body that a schema reads
without error but with bytes left over was written with another schema.

Rows come out as the values binary COPY sends (``COPY_TYPES``): a uuid as its 16 bytes, a
timestamptz as microseconds since 2000-01-01 UTC. Where a writer schema puts the logical
types ``uuid`` and ``timestamp-millis`` on the fields the table expects them on, the value
is read without them (a str and an int) and converted here: fastavro would build a
``uuid.UUID`` and a ``datetime`` per field only for psycopg to take them apart again, which
was half the decode's time (bench/decode.py). The checks stay those of fastavro's logical
readers: a uuid must be 32 hex digits, a timestamp within years 1-9999.
"""

from __future__ import annotations

import functools
import io
import json
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from fastavro import parse_schema, schemaless_reader

from backup_pipeline.decode.catalog import AVRO_TABLES, BEKREFTELSER, PAA_VEGNE_AV, AvroTable

MAGIC = 0
FRAME = 5  # magic byte + 4-byte big-endian schema id
_SCHEMA_ID = struct.Struct(">I").unpack_from

# reason_kind values of backup_undecodable
NOT_FRAMED = "not_framed"
UNKNOWN_SCHEMA = "unknown_schema"  # no registry, no vendored schema fits
SCHEMA_PENDING = "schema_pending"  # the registry could not be asked yet; retried
DOES_NOT_FIT = "does_not_fit"  # the id's schema does not read these bytes (exactly)
UNKNOWN_ENUM_SYMBOL = "unknown_enum_symbol"
# Kinds that a known schema can settle, retried automatically on every pass.
WAITING_FOR_SCHEMA = (UNKNOWN_SCHEMA, SCHEMA_PENDING)

# Binary COPY sends no type tags: the server reads each field with its column's receive
# function. So a uuid goes as 16 bytes and a timestamptz as an int8 of microseconds since
# 2000-01-01 UTC, both through psycopg's compiled dumpers.
_WIRE = {"uuid": "bytea", "timestamptz": "int8"}
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_MILLIS = 946_684_800_000
_MICROSECOND = timedelta(microseconds=1)
# What fastavro's timestamp-millis reader accepts (a datetime: years 1 to 9999).
_MIN_MILLIS = -62_135_596_800_000
_MAX_MILLIS = 253_402_300_799_999
# Logical types read as their plain Avro type where the table expects them.
_CONVERTED = {"uuid": "uuid", "timestamptz": "timestamp-millis"}


def copy_types(table: AvroTable) -> list[str]:
    """The types to give psycopg's binary COPY for the rows ``decode`` returns."""
    return [_WIRE.get(c.pg_type, c.pg_type) for c in table.columns]


Decoder = Callable[[bytes], tuple[Any, ...]]


class Undecodable(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class WriterSchema:
    schema_id: int
    text: str  # exactly as resolved (registry answer or vendored file)
    source: str  # 'registry' or 'vendored:<file>'
    parsed: Any
    # What values are read with: ``parsed`` less the logical types converted here.
    reader: Any = None
    # Whether ``reader`` gives timestamps as int milliseconds (else as datetimes).
    plain: bool = False
    # decoder_for's functions, made once per table.
    decoders: dict[str, Decoder] = field(default_factory=dict, compare=False, repr=False)

    @property
    def record_name(self) -> str:
        return str(self.parsed.get("name", "")) if isinstance(self.parsed, dict) else ""


@functools.lru_cache(maxsize=256)  # vendored candidates are parsed again per resolve
def parse(schema_id: int, text: str, source: str) -> WriterSchema:
    schema = json.loads(text)
    parsed = parse_schema(schema)
    if _fits_plain_read(schema):
        return WriterSchema(schema_id, text, source, parsed, parse_schema(_plain(schema)), True)
    return WriterSchema(schema_id, text, source, parsed, parsed, False)


def vendored_text(name: str) -> str:
    return (resources.files("backup_pipeline.decode") / "schemas" / name).read_text("utf-8")


def schema_id_of(value: bytes) -> int:
    """The schema id of a Confluent frame; Undecodable(NOT_FRAMED) if it is not one."""
    if len(value) < FRAME or value[0] != MAGIC:
        first = f"0x{value[0]:02x}" if value else "nothing"
        raise Undecodable(
            NOT_FRAMED,
            f"not a Confluent-framed value ({len(value)} bytes, first byte {first}; "
            "expected 0x00 and a 4-byte schema id)",
        )
    return int(_SCHEMA_ID(value, 1)[0])


def decode(table: AvroTable, value: bytes, writer: WriterSchema) -> tuple[Any, ...]:
    """The value columns (after the key and schema id) of one framed value, as COPY
    sends them (``copy_types``)."""
    return decoder_for(table, writer)(value)


def decoder_for(table: AvroTable, writer: WriterSchema) -> Decoder:
    """``decode`` for one table and writer schema, with what they decide looked up once
    (the decode pass calls it for every row)."""
    made = writer.decoders.get(table.raw_table)
    if made is None:
        made = writer.decoders[table.raw_table] = _make_decoder(table, writer)
    return made


def _make_decoder(table: AvroTable, writer: WriterSchema) -> Decoder:
    schema = writer.reader
    # Record names only where a union of records needs them (10% of the read's time).
    union = table.record_union
    flatten = _FLATTENERS[table.raw_table](table, _millis if writer.plain else _instant)

    def decode_one(value: bytes) -> tuple[Any, ...]:
        buf = io.BytesIO(value)
        buf.seek(FRAME)
        try:
            record = schemaless_reader(buf, schema, None, union)
        except Exception as exc:  # fastavro raises EOFError, IndexError, ValueError, ...
            raise Undecodable(
                DOES_NOT_FIT,
                f"schema {writer.schema_id} ({writer.source}) does not read the value: "
                f"{type(exc).__name__}: {exc}",
            ) from None
        left = len(value) - buf.tell()
        if left:
            raise Undecodable(
                DOES_NOT_FIT,
                f"schema {writer.schema_id} ({writer.source}) reads the value with {left} "
                "byte(s) left over: it was written with another schema",
            )
        try:
            if type(record) is not dict:
                raise TypeError(f"expected a record, got {type(record).__name__}")
            return flatten(record)
        except Undecodable:
            raise
        except Exception as exc:  # a field of an unexpected type or shape
            raise Undecodable(
                DOES_NOT_FIT,
                f"schema {writer.schema_id} ({writer.source}) does not have the fields of "
                f"{table.record_name}: {type(exc).__name__}: {exc}",
            ) from None

    return decode_one


def as_python(table: AvroTable, row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row of ``decode`` (after the key columns) with uuid and timestamptz values as
    Python objects, for statements that bind parameters instead of COPYing."""
    return tuple(
        None
        if value is None
        else uuid.UUID(bytes=value)
        if column.pg_type == "uuid"
        else _PG_EPOCH + value * _MICROSECOND
        if column.pg_type == "timestamptz"
        else value
        for column, value in zip(table.columns[-len(row) :], row, strict=True)
    )


def _uuid(value: Any) -> bytes:
    # The common form: 32 hex digits (with dashes). Anything else is judged by uuid.UUID,
    # as fastavro's uuid reader does, so the same strings decode and the same fail.
    if type(value) is str:
        digits = value.replace("-", "")
        if len(digits) == 32:
            try:
                raw = bytes.fromhex(digits)
            except ValueError:
                raw = b""
            if len(raw) == 16:
                return raw
        return uuid.UUID(value).bytes
    if isinstance(value, uuid.UUID):
        return value.bytes
    raise TypeError(f"expected a uuid, got {type(value).__name__}")


def _millis(value: Any) -> int:
    if type(value) is not int:
        raise TypeError(f"expected timestamp-millis, got {type(value).__name__}")
    if not _MIN_MILLIS <= value <= _MAX_MILLIS:
        raise OverflowError(f"timestamp-millis {value} is outside years 1-9999")
    return (value - _PG_EPOCH_MILLIS) * 1000


def _instant(value: Any) -> int:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise TypeError(f"expected a timestamp, got {type(value).__name__}")
    return (value - _PG_EPOCH) // _MICROSECOND


def _unknown_symbol(table: AvroTable, enum_name: str, symbol: Any) -> Undecodable:
    return Undecodable(
        UNKNOWN_ENUM_SYMBOL,
        f"enum symbol {symbol!r} is not one of {enum_name.rsplit('.', 1)[-1]} "
        f"({', '.join(table.enums[enum_name])})",
    )


def _not_a_boolean(value: Any) -> TypeError:
    return TypeError(f"expected a boolean, got {type(value).__name__}")


_LOESNING = "no.nav.paw.bekreftelse.melding.v1.vo.Bekreftelsesloesning"
_BRUKER_TYPE = "no.nav.paw.bekreftelse.melding.v1.vo.BrukerType"
_PAA_VEGNE_AV_LOESNING = "no.nav.paw.bekreftelse.paavegneav.v1.vo.Bekreftelsesloesning"

Flatten = Callable[[dict[str, Any]], tuple[Any, ...]]


def _bekreftelse(table: AvroTable, instant: Callable[[Any], int]) -> Flatten:
    enums = table.enums  # looked up per value: a release may know more symbols

    def flatten(r: dict[str, Any]) -> tuple[Any, ...]:
        svar = r["svar"]
        sendt = svar["sendtInnAv"]
        bruker = sendt["utfoertAv"]
        periode_id = _uuid(r["periodeId"])
        if (loesning := r["bekreftelsesloesning"]) not in enums[_LOESNING]:
            raise _unknown_symbol(table, _LOESNING, loesning)
        bekreftelse_id = _uuid(r["id"])
        tidspunkt = instant(sendt["tidspunkt"])
        if (bruker_type := bruker["type"]) not in enums[_BRUKER_TYPE]:
            raise _unknown_symbol(table, _BRUKER_TYPE, bruker_type)
        row = (
            periode_id,
            loesning,
            bekreftelse_id,
            tidspunkt,
            bruker_type,
            bruker["id"],
            bruker.get("sikkerhetsnivaa"),
            sendt["kilde"],
            sendt["aarsak"],
            instant(svar["gjelderFra"]),
            instant(svar["gjelderTil"]),
            svar["harJobbetIDennePerioden"],
            svar["vilFortsetteSomArbeidssoeker"],
        )
        if type(row[11]) is not bool:
            raise _not_a_boolean(row[11])
        if type(row[12]) is not bool:
            raise _not_a_boolean(row[12])
        return row

    return flatten


def _paa_vegne_av(table: AvroTable, instant: Callable[[Any], int]) -> Flatten:
    enums = table.enums  # looked up per value: a release may know more symbols
    branches: dict[Any, str] = {}  # record full name -> short name

    def flatten(r: dict[str, Any]) -> tuple[Any, ...]:
        branch, fields = r["handling"]  # (record full name, fields): return_record_name
        handling = branches.get(branch)
        if handling is None:
            handling = branches[branch] = str(branch).rsplit(".", 1)[-1]
        if handling == "Start":
            interval, grace, brutt = fields["intervalMS"], fields["graceMS"], None
        elif handling == "Stopp":
            interval, grace, brutt = None, None, fields.get("fristBrutt")
        else:
            raise Undecodable(DOES_NOT_FIT, f"handling is {branch!r}, neither Start nor Stopp")
        periode_id = _uuid(r["periodeId"])
        if (loesning := r["bekreftelsesloesning"]) not in enums[_PAA_VEGNE_AV_LOESNING]:
            raise _unknown_symbol(table, _PAA_VEGNE_AV_LOESNING, loesning)
        return (periode_id, loesning, handling, interval, grace, brutt)

    return flatten


_FLATTENERS = {BEKREFTELSER.raw_table: _bekreftelse, PAA_VEGNE_AV.raw_table: _paa_vegne_av}


def _fits_plain_read(schema: Any) -> bool:
    """Whether the schema is one of a table's records with ``uuid`` / ``timestamp-millis``
    exactly on the fields of that table's uuid / timestamptz columns."""
    if not isinstance(schema, dict):
        return False
    name = str(schema.get("name", ""))
    full = name if "." in name or not schema.get("namespace") else f"{schema['namespace']}.{name}"
    table = next((t for t in AVRO_TABLES if t.record_name == full), None)
    if table is None:
        return False
    found: dict[str, set[str | None]] = {}
    _logical_types(schema, "", found, {})
    return all(
        found.get(c.avro_path) == {_CONVERTED[c.pg_type]}
        for c in table.value_columns
        if c.pg_type in _CONVERTED
    )


def _logical_types(
    schema: Any, path: str, found: dict[str, set[str | None]], named: dict[str, Any]
) -> None:
    """The logicalType at each dotted field path (a union of records adds the branch's
    short name, as the columns' avro_path does)."""
    if isinstance(schema, str) and schema in named:
        schema = named[schema]
    if isinstance(schema, list):
        branches = [b for b in schema if b != "null"]
        for branch in branches:
            record = isinstance(branch, dict) and branch.get("type") == "record"
            short = str(branch.get("name", "")).rsplit(".", 1)[-1] if record else ""
            _logical_types(
                branch, f"{path}.{short}" if len(branches) > 1 and record else path, found, named
            )
        return
    if isinstance(schema, dict) and schema.get("type") in ("record", "enum", "fixed"):
        named[str(schema.get("name", ""))] = schema
        named[str(schema.get("name", "")).rsplit(".", 1)[-1]] = schema
    if isinstance(schema, dict) and schema.get("type") == "record":
        for field in schema.get("fields", []):
            name = str(field.get("name", ""))
            _logical_types(field.get("type"), f"{path}.{name}" if path else name, found, named)
        return
    logical = schema.get("logicalType") if isinstance(schema, dict) else None
    found.setdefault(path, set()).add(str(logical) if logical else None)


def _plain(schema: Any) -> Any:
    """The schema without the logical types that decode() converts itself."""
    if isinstance(schema, dict):
        return {
            k: _plain(v)
            for k, v in schema.items()
            if not (k == "logicalType" and v in _CONVERTED.values())
        }
    if isinstance(schema, list):
        return [_plain(v) for v in schema]
    return schema
