"""The demo producer: realistic records at a modest rate into the three topics."""

from __future__ import annotations

import logging
import random
import time

from confluent_kafka import Producer

from backup_pipeline.demo.data import awkward_record, good_record
from backup_pipeline.kafka.config import producer_config
from backup_pipeline.settings import Settings
from backup_pipeline.topics import TOPICS

log = logging.getLogger(__name__)


def produce(
    settings: Settings,
    *,
    rate: float,
    seconds: float | None,
    awkward_share: float = 0.02,
    seed: int | None = None,
) -> int:
    """Produce ``rate`` records/s spread over the three topics; return how many."""
    rng = random.Random(seed)
    producer = Producer(producer_config(settings))
    sent = 0
    started = time.monotonic()
    try:
        while seconds is None or time.monotonic() - started < seconds:
            spec = rng.choice(TOPICS)
            make = awkward_record if rng.random() < awkward_share else good_record
            record = make(rng, spec.value_format, spec.table)
            producer.produce(
                settings.topic(spec),
                key=record.key,
                value=record.value,
                headers=list(record.headers),
            )
            sent += 1
            producer.poll(0)
            # Pace to the wanted rate without drifting.
            delay = started + sent / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    except KeyboardInterrupt:
        pass
    finally:
        producer.flush(30)
    return sent
