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
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from importlib import resources
from typing import Any

from fastavro import parse_schema, schemaless_reader

from backup_pipeline.decode.catalog import BEKREFTELSER, PAA_VEGNE_AV, AvroTable

MAGIC = 0
FRAME = 5  # magic byte + 4-byte big-endian schema id

# reason_kind values of backup_undecodable
NOT_FRAMED = "not_framed"
UNKNOWN_SCHEMA = "unknown_schema"  # no registry, no vendored schema fits
SCHEMA_PENDING = "schema_pending"  # the registry could not be asked yet; retried
DOES_NOT_FIT = "does_not_fit"  # the id's schema does not read these bytes (exactly)
UNKNOWN_ENUM_SYMBOL = "unknown_enum_symbol"
# Kinds that a known schema can settle, retried automatically on every pass.
WAITING_FOR_SCHEMA = (UNKNOWN_SCHEMA, SCHEMA_PENDING)


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

    @property
    def record_name(self) -> str:
        return str(self.parsed.get("name", "")) if isinstance(self.parsed, dict) else ""


def parse(schema_id: int, text: str, source: str) -> WriterSchema:
    return WriterSchema(schema_id, text, source, parse_schema(json.loads(text)))


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
    return int(struct.unpack_from(">I", value, 1)[0])


def decode(table: AvroTable, value: bytes, writer: WriterSchema) -> tuple[Any, ...]:
    """The value columns (after the key and schema id) of one framed value."""
    buf = io.BytesIO(value)
    buf.seek(FRAME)
    try:
        # Record names only where a union of records needs them (10% of the read's time).
        record = schemaless_reader(buf, writer.parsed, None, return_record_name=table.record_union)
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
        if not isinstance(record, dict):
            raise TypeError(f"expected a record, got {type(record).__name__}")
        return _FLATTEN[table.raw_table](table, record)
    except Undecodable:
        raise
    except Exception as exc:  # a field of an unexpected type or shape
        raise Undecodable(
            DOES_NOT_FIT,
            f"schema {writer.schema_id} ({writer.source}) does not have the fields of "
            f"{table.record_name}: {type(exc).__name__}: {exc}",
        ) from None


def _enum(table: AvroTable, enum_name: str, symbol: Any) -> str:
    if symbol not in table.enums[enum_name]:
        raise Undecodable(
            UNKNOWN_ENUM_SYMBOL,
            f"enum symbol {symbol!r} is not one of {enum_name.rsplit('.', 1)[-1]} "
            f"({', '.join(table.enums[enum_name])})",
        )
    return str(symbol)


def _bekreftelse(table: AvroTable, r: dict[str, Any]) -> tuple[Any, ...]:
    svar = r["svar"]
    sendt = svar["sendtInnAv"]
    bruker = sendt["utfoertAv"]
    return (
        r["periodeId"],
        _enum(
            table,
            "no.nav.paw.bekreftelse.melding.v1.vo.Bekreftelsesloesning",
            r["bekreftelsesloesning"],
        ),
        r["id"],
        sendt["tidspunkt"],
        _enum(table, "no.nav.paw.bekreftelse.melding.v1.vo.BrukerType", bruker["type"]),
        bruker["id"],
        bruker.get("sikkerhetsnivaa"),
        sendt["kilde"],
        sendt["aarsak"],
        svar["gjelderFra"],
        svar["gjelderTil"],
        _bool(svar["harJobbetIDennePerioden"]),
        _bool(svar["vilFortsetteSomArbeidssoeker"]),
    )


def _paa_vegne_av(table: AvroTable, r: dict[str, Any]) -> tuple[Any, ...]:
    branch, fields = r["handling"]  # (record full name, fields): return_record_name
    handling = str(branch).rsplit(".", 1)[-1]
    if handling == "Start":
        interval, grace, brutt = fields["intervalMS"], fields["graceMS"], None
    elif handling == "Stopp":
        interval, grace, brutt = None, None, fields.get("fristBrutt")
    else:
        raise Undecodable(DOES_NOT_FIT, f"handling is {branch!r}, neither Start nor Stopp")
    return (
        r["periodeId"],
        _enum(
            table,
            "no.nav.paw.bekreftelse.paavegneav.v1.vo.Bekreftelsesloesning",
            r["bekreftelsesloesning"],
        ),
        handling,
        interval,
        grace,
        brutt,
    )


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected a boolean, got {type(value).__name__}")
    return value


_FLATTEN = {BEKREFTELSER.raw_table: _bekreftelse, PAA_VEGNE_AV.raw_table: _paa_vegne_av}
