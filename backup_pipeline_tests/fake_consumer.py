"""A fake Kafka consumer for ``source.read``: a partition log held in memory.

It behaves like librdkafka as far as ``read`` can tell: records come in offset order per
partition, offsets without a record (transaction markers, aborted or compacted records)
are passed silently, a partition that reaches the end of its log reports
``_PARTITION_EOF`` once with the next offset, and paused partitions deliver nothing.
The messages are real ``confluent_kafka.Message`` objects.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, TopicPartition

# One partition's log: index = offset; None = an offset that carries no record.
Log = list[bytes | None]


@dataclass
class FakeConsumer:
    topic: str
    logs: dict[int, Log]
    # At most this many messages per consume() call: librdkafka hands back only what it has
    # queued, so a partition's records arrive over several polls.
    queued: int = 1_000_000
    # Partitions that never deliver anything, not even EOF (a broker that stopped answering).
    silent: set[int] = field(default_factory=set)
    # Errors delivered (once, before anything else) on the first poll.
    errors: list[KafkaError] = field(default_factory=list)
    position: dict[int, int] = field(default_factory=dict)
    paused: set[int] = field(default_factory=set)
    eof_sent: set[int] = field(default_factory=set)
    consume_calls: list[int] = field(default_factory=list)
    assigned: list[tuple[int, int]] = field(default_factory=list)
    unassigned: bool = False

    def assign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self.position[tp.partition] = tp.offset
            self.assigned.append((tp.partition, tp.offset))

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.update(tp.partition for tp in partitions)

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused.difference_update(tp.partition for tp in partitions)

    def unassign(self) -> None:
        self.position.clear()
        self.unassigned = True

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        self.consume_calls.append(num_messages)
        out: list[Message] = []
        while self.errors and len(out) < num_messages:
            error = self.errors.pop(0)
            out.append(Message(topic=self.topic, partition=0, offset=-1, error=error))
        limit = min(num_messages, self.queued)
        progressed = True
        while len(out) < limit and progressed:
            progressed = False
            # Round-robin over the partitions, one message each, like interleaved fetches.
            for partition in sorted(self.position):
                if len(out) >= limit:
                    break
                message = self._next(partition)
                if message is not None:
                    out.append(message)
                    progressed = True
        if not out and timeout > 0:
            time.sleep(min(timeout, 0.001))  # an empty poll waits a moment, like the real one
        return out

    def _next(self, partition: int) -> Message | None:
        if partition in self.paused or partition in self.silent:
            return None
        log = self.logs[partition]
        offset = self.position[partition]
        while offset < len(log) and log[offset] is None:
            offset += 1  # a marker: the consumer's position moves past it, nothing delivered
        self.position[partition] = offset
        if offset >= len(log):
            if partition in self.eof_sent:
                return None
            self.eof_sent.add(partition)
            eof = KafkaError(KafkaError._PARTITION_EOF)
            return Message(topic=self.topic, partition=partition, offset=offset, error=eof)
        self.position[partition] = offset + 1
        value = log[offset]
        return Message(
            topic=self.topic, partition=partition, offset=offset, key=b"k" * 8, value=value
        )
