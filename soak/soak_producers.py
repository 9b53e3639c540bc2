"""The soak test's producers: one thread per topic writing realistic records (5 % awkward),
and what their delivery reports said. Imported by soak.py (soak/ is on sys.path as it runs)."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import cast

from confluent_kafka import KafkaError, Message, Producer

from backup_pipeline.demo.data import awkward_record, good_record
from backup_pipeline.topics import TopicSpec

log = logging.getLogger("soak")


# ------------------------------------------------------------------ producers ----


@dataclass
class Produced:
    """What the producers' delivery reports said, per topic."""

    delivered: dict[str, set[tuple[int, int]]] = field(default_factory=dict)
    failed: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_delivery(self, topic: str):  # type: ignore[no-untyped-def]
        def report(err: KafkaError | None, msg: Message) -> None:
            with self.lock:
                if err is None:
                    self.delivered.setdefault(topic, set()).add(
                        (cast(int, msg.partition()), cast(int, msg.offset()))
                    )
                else:
                    self.failed[topic] += 1

        return report


def producer_loop(
    brokers: str,
    spec: TopicSpec,
    topic: str,
    rate: float,
    awkward_share: float,
    produced: Produced,
    stop: threading.Event,
    seed: int,
) -> None:
    rng = random.Random(seed)
    producer = Producer(
        {
            "bootstrap.servers": brokers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 20,
            # Ride out a broker outage (the soak keeps it short) instead of giving up.
            "message.timeout.ms": 300_000,
            "log_level": 0,
        }
    )
    report = produced.on_delivery(topic)
    interval = 1.0 / rate
    next_at = time.monotonic()
    while not stop.is_set():
        make = awkward_record if rng.random() < awkward_share else good_record
        record = make(rng, spec.value_format, spec.table)
        while not stop.is_set():
            try:
                producer.produce(
                    topic,
                    key=record.key,
                    value=record.value,
                    headers=list(record.headers),
                    on_delivery=report,
                )
                break
            except BufferError:
                producer.poll(0.2)
        producer.poll(0)
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -5:
            next_at = time.monotonic()  # fell behind (broker down): don't burst afterwards
    left = producer.flush(300)
    if left:
        log.error("%s: %d records still undelivered after flush", topic, left)
