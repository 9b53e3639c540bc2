"""Questions to Kafka about a topic: its partitions, each partition's log start and end.

Backup, restore, verify, status and versions all ask them; the bounded read of a backup
pass is in ``backup.source``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from backup_pipeline.errors import BackupError, KafkaUnavailableError
from backup_pipeline.kafka.config import consumer_config
from backup_pipeline.settings import Settings


def open_consumer(settings: Settings) -> Consumer:
    return Consumer(consumer_config(settings))


@dataclass
class Watermarks:
    log_start: int  # first offset Kafka still holds
    end: int  # read_committed: the last stable offset (next offset to be readable)


def partitions(consumer: Consumer, topic: str, timeout: float) -> list[int]:
    try:
        metadata = consumer.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        raise KafkaUnavailableError(f"cannot list partitions of {topic}: {exc}") from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None:
        reason = found.error.str() if found is not None and found.error else "not found"
        raise BackupError(f"topic {topic} is not available: {reason}")
    return sorted(found.partitions)


# A partition's leadership is moving (a broker restarts, a new topic elects its leaders):
# the answer comes from the next leader a moment later.
LEADERSHIP_MOVING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.OFFSET_NOT_AVAILABLE,
    }
)


class WatermarkConsumer(Protocol):
    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = ..., cached: bool = ...
    ) -> tuple[int, int] | None: ...


def _leadership_moving(exc: BaseException) -> bool:
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
    return isinstance(error, KafkaError) and error.code() in LEADERSHIP_MOVING


def watermarks(
    consumer: WatermarkConsumer, topic: str, partition: int, timeout: float
) -> Watermarks:
    """The partition's log start and end; a leadership change is waited out (up to
    ``timeout``), any other error is ``KafkaUnavailableError`` at once."""
    try:
        for attempt in Retrying(
            retry=retry_if_exception(_leadership_moving),
            stop=stop_after_delay(timeout),
            wait=wait_exponential(multiplier=0.1, max=1.0),
            reraise=True,
        ):
            with attempt:
                # cached=False asks the broker; with isolation.level=read_committed the
                # high mark is the last stable offset, so an open transaction never becomes
                # "lag to read".
                marks = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=timeout, cached=False
                )
    except KafkaException as exc:
        raise KafkaUnavailableError(f"cannot read offsets of {topic}[{partition}]: {exc}") from None
    if marks is None:
        raise KafkaUnavailableError(f"cannot read offsets of {topic}[{partition}]: no answer")
    low, high = marks
    return Watermarks(log_start=low, end=high)
