"""Realistic records for the three topics (see shared/DATA.md), awkward ones included.

Used by the demo producer, the tests and the benchmark, so all three see the same shapes.
"""

from __future__ import annotations

import json
import random
import struct
import uuid
from dataclasses import dataclass

from backup_pipeline.topics import ValueFormat

EVENT_TYPES = (
    "bekreftelse.tilgjengelig",
    "bekreftelse.melding_mottatt",
    "bekreftelse.leveringsfrist_utloept",
    "bekreftelse.register_grace_periode_gjenstaaende_tid",
    "bekreftelse.register_grace_periode_utloept",
    "bekreftelse.register_grace_periode_utloept_etter_ekstern_innsamling",
    "bekreftelse.ekstern_grace_periode_utloept",
    "bekreftelse.periode_avsluttet",
    "bekreftelse.ba_om_aa_avslutte_periode",
    "bekreftelse.paa_vegne_av_startet",
)
SCHEMA_IDS = {"bekreftelser": 101, "bekreftelse_paa_vegne_av": 202}


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


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _avro_string(text: str) -> bytes:
    data = text.encode()
    return _zigzag(len(data)) + data


def avro_value(rng: random.Random, table: str) -> bytes:
    """Confluent framing (0x00, 4-byte schema id) around an Avro binary body."""
    header = b"\x00" + struct.pack(">I", SCHEMA_IDS.get(table, 1))
    if table == "bekreftelse_paa_vegne_av":
        body = (
            _avro_string(_uuid(rng))
            + _zigzag(rng.randrange(0, 3))
            + _zigzag(rng.randrange(0, 2))
            + _zigzag(rng.randrange(0, 10**12))
        )
    else:
        body = (
            _avro_string(_uuid(rng))
            + _avro_string("paw-arbeidssoekerregisteret")
            + _avro_string(_uuid(rng))
            + _zigzag(rng.randrange(10**12, 2 * 10**12))
            + _avro_string("SLUTTBRUKER")
            + _avro_string(str(rng.randrange(10**10, 10**11)))
            + _avro_string("nav-bekreftelse-frontend")
            + _avro_string("Bruker svarte")
            + _zigzag(1_735_689_600_000)
            + _zigzag(1_736_899_200_000)
            + bytes([rng.randrange(2), rng.randrange(2)])
        )
    return header + body


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
