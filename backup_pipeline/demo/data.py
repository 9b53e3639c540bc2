"""Realistic records for the three topics (see shared/DATA.md), awkward ones included.

Used by the demo producer, the tests and the benchmark, so all three see the same shapes.
"""

from __future__ import annotations

import io
import json
import random
import struct
import uuid
from dataclasses import dataclass
from functools import cache
from typing import Any

from fastavro import parse_schema, schemaless_writer

from backup_pipeline.decode.decoder import vendored_text
from backup_pipeline.topics import ValueFormat
from backup_pipeline.typed_views import KNOWN_EVENT_TYPES

# The demo produces every event type the typed view knows.
EVENT_TYPES = KNOWN_EVENT_TYPES


@dataclass(frozen=True)
class DemoRecord:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


def long_key(value: int) -> bytes:
    """Kafka LongSerializer: 8 bytes, big-endian, two's complement."""
    return struct.pack(">q", value)


def traceparent(rng: random.Random) -> str:
    return f"00-{rng.getrandbits(128):032x}-{rng.getrandbits(64):016x}-01"


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _instant(rng: random.Random) -> str | float:
    seconds = 1_735_689_600 + rng.randrange(0, 60 * 86400)
    # Jackson writes instants either as ISO-8601 text or as decimal seconds.
    if rng.random() < 0.5:
        return f"{seconds}.{rng.randrange(0, 10**9):09d}"  # decimal seconds, as text below
    return (
        f"2025-{1 + seconds % 12:02d}-{1 + seconds % 28:02d}T"
        f"{seconds % 24:02d}:{seconds % 60:02d}:{seconds % 59:02d}.{seconds % 1000:03d}Z"
    )


def event_value(rng: random.Random, person: int | None = None) -> bytes:
    kind = rng.choice(EVENT_TYPES)
    instant = _instant(rng)
    event: dict[str, object] = {
        "hendelseId": _uuid(rng),
        "periodeId": _uuid(rng),
        "arbeidssoekerId": person if person is not None else rng.randrange(1, 5_000_000),
        "hendelseTidspunkt": "__INSTANT__",
        "hendelseType": kind,
    }
    if kind in (
        "bekreftelse.tilgjengelig",
        "bekreftelse.melding_mottatt",
        "bekreftelse.leveringsfrist_utloept",
    ):
        event["bekreftelseId"] = _uuid(rng)
    if kind == "bekreftelse.tilgjengelig":
        event["gjelderFra"] = "2025-01-06T00:00:00Z"
        event["gjelderTil"] = "2025-01-20T00:00:00Z"
    if kind == "bekreftelse.leveringsfrist_utloept":
        event["leveringsfrist"] = "2025-01-28T00:00:00Z"
    if kind == "bekreftelse.ba_om_aa_avslutte_periode":
        event["utfoertAv"] = {
            "type": "SLUTTBRUKER",
            "id": f"{rng.randrange(10**10, 10**11)}",
            "sikkerhetsnivaa": "idporten-loa-high",
        }
        event["kilde"] = "paw-arbeidssoekerregisteret-bekreftelse"
    text = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    # Decimal seconds are a JSON number, not a string, exactly as Jackson writes them.
    rendered = instant if isinstance(instant, str) and "T" not in instant else json.dumps(instant)
    return text.replace('"__INSTANT__"', rendered).encode()


# Confluent schema ids the demo writes with, per table: (current writer, older writer).
SCHEMA_IDS = {"bekreftelser": (101, 100), "bekreftelse_paa_vegne_av": (202, 201)}
_WRITERS = {
    "bekreftelser": ("bekreftelse-v1.avsc", "bekreftelse-pre-2025-03-07.avsc"),
    "bekreftelse_paa_vegne_av": ("paavegneav-v1.avsc", "paavegneav-pre-2025-03-26.avsc"),
}
_LOESNINGER = (
    "UKJENT_VERDI",
    "ARBEIDSSOEKERREGISTERET",
    "DAGPENGER",
    "FRISKMELDT_TIL_ARBEIDSFORMIDLING",
)


@cache
def _parsed(name: str) -> Any:
    return parse_schema(json.loads(vendored_text(name)))


def avro_record(rng: random.Random, table: str, *, old: bool = False) -> dict[str, Any]:
    """A record as the producer's writer schema (current, or the older one) holds it."""
    if table == "bekreftelse_paa_vegne_av":
        start = rng.random() < 0.5
        stopp: dict[str, Any] = {} if old else {"fristBrutt": rng.random() < 0.2}
        handling: Any = (
            (
                "no.nav.paw.bekreftelse.paavegneav.v1.vo.Start",
                {"intervalMS": 14 * 86_400_000, "graceMS": 7 * 86_400_000},
            )
            if start
            else ("no.nav.paw.bekreftelse.paavegneav.v1.vo.Stopp", stopp)
        )
        return {
            "periodeId": _uuid(rng),
            "bekreftelsesloesning": rng.choice(_LOESNINGER),
            "handling": handling,
        }
    fra = 1_735_689_600_000 + rng.randrange(0, 60) * 86_400_000
    bruker: dict[str, Any] = {"type": "SLUTTBRUKER", "id": str(rng.randrange(10**10, 10**11))}
    if not old:
        bruker["sikkerhetsnivaa"] = rng.choice(["tokenx:Level4", "idporten-loa-high", None])
    return {
        "periodeId": _uuid(rng),
        "bekreftelsesloesning": rng.choice(_LOESNINGER),
        "id": _uuid(rng),
        "svar": {
            "sendtInnAv": {
                "tidspunkt": fra + 14 * 86_400_000 + rng.randrange(0, 86_400_000),
                "utfoertAv": bruker,
                "kilde": "nav-bekreftelse-frontend",
                "aarsak": "Bruker sendte inn bekreftelse",
            },
            "gjelderFra": fra,
            "gjelderTil": fra + 14 * 86_400_000,
            "harJobbetIDennePerioden": rng.random() < 0.3,
            "vilFortsetteSomArbeidssoeker": rng.random() < 0.8,
        },
    }


def avro_value(rng: random.Random, table: str, *, old: bool | None = None) -> bytes:
    """Confluent framing (0x00, 4-byte schema id) around a real Avro body, written with the
    current writer schema or (about one in ten, or ``old``) the older one."""
    if old is None:
        old = rng.random() < 0.1
    writer = _WRITERS[table][1 if old else 0]
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", SCHEMA_IDS[table][1 if old else 0]))
    schemaless_writer(buf, _parsed(writer), avro_record(rng, table, old=old))
    return buf.getvalue()


def good_record(rng: random.Random, value_format: ValueFormat, table: str) -> DemoRecord:
    # Keys are hashes in practice, so negative keys are common.
    key = long_key(rng.randrange(-(2**63), 2**63))
    headers: list[tuple[str, bytes | None]] = [("traceparent", traceparent(rng).encode())]
    if rng.random() < 0.1:
        headers.append(("x-source", b"paw"))
    value = event_value(rng) if value_format is ValueFormat.JSON_EVENT else avro_value(rng, table)
    return DemoRecord(key, value, headers)


def awkward_record(rng: random.Random, value_format: ValueFormat, table: str) -> DemoRecord:
    """One of the cases a real topic holds that must neither stop nor vanish."""
    good = good_record(rng, value_format, table)
    case = rng.randrange(6)
    if case == 0:
        return DemoRecord(good.key, None, good.headers)  # tombstone
    if case == 1:
        return DemoRecord(b"\x01\x02\x03\x04", good.value, good.headers)  # 4-byte key
    if case == 2:
        return DemoRecord(
            good.key, good.value, [("traceparent", b"00-" + b"f" * 70), ("traceparent", None)]
        )
    if case == 3:  # duplicated header: the last traceparent counts
        return DemoRecord(
            good.key, good.value, [("traceparent", traceparent(rng).encode()), *good.headers]
        )
    if value_format is ValueFormat.JSON_EVENT:
        if case == 4:
            return DemoRecord(
                good.key, b'{"hendelseType": "bekreftelse.tilgjengelig", ', good.headers
            )  # truncated JSON
        return DemoRecord(
            good.key, b'{"hendelseType":"x","arbeidssoekerId":"12"}', good.headers
        )  # id is a string
    return DemoRecord(None, good.value, good.headers)  # no key
