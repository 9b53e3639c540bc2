"""The topics this backup protects, declared once.

A fourth topic is one entry here plus one migration that creates its table.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ValueFormat(enum.Enum):
    # JSON text stored as jsonb, with arbeidssoeker_id lifted out of it.
    JSON_EVENT = "json_event"
    # Opaque bytes (Confluent-framed Avro) stored verbatim.
    BYTES = "bytes"


@dataclass(frozen=True)
class TopicSpec:
    table: str
    topic_env_var: str
    default_topic: str
    value_format: ValueFormat
    description: str


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(
        table="bekreftelse_hendelser",
        topic_env_var="KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_HENDELSESLOGG_TOPIC",
        default_topic="paw.arbeidssoker-bekreftelse-hendelseslogg-v2",
        value_format=ValueFormat.JSON_EVENT,
        description="Bekreftelse event log: one JSON event per record (hendelseType, "
        "periodeId, arbeidssoekerId, hendelseTidspunkt, ...).",
    ),
    TopicSpec(
        table="bekreftelser",
        topic_env_var="KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_TOPIC",
        default_topic="paw.arbeidssoker-bekreftelse-v1",
        value_format=ValueFormat.BYTES,
        description="Bekreftelse messages: Confluent-framed Avro "
        "(no.nav.paw.bekreftelse.melding.v1.Bekreftelse), stored verbatim.",
    ),
    TopicSpec(
        table="bekreftelse_paa_vegne_av",
        topic_env_var="KAFKA_PAW_ARBEIDSSOKER_BEKREFTELSE_PAAVEGNEAV_TOPIC",
        default_topic="paw.arbeidssoker-bekreftelse-paavegneav-v2",
        value_format=ValueFormat.BYTES,
        description="PaaVegneAv start/stop messages: Confluent-framed Avro "
        "(no.nav.paw.bekreftelse.paavegneav.v1.PaaVegneAv), stored verbatim.",
    ),
)

TABLES: tuple[str, ...] = tuple(t.table for t in TOPICS)


def spec_for_table(table: str) -> TopicSpec:
    for spec in TOPICS:
        if spec.table == table:
            return spec
    raise KeyError(f"unknown table {table!r}; known tables: {', '.join(TABLES)}")
