"""source.read's bookkeeping, through a fake consumer: no broker, milliseconds per test.

What only a real broker can show (read_committed, real transaction markers, retention)
is in test_backup.py; these pin the rules: where the HWM goes, what counts as an offset
without a record, when a batch is cut and when a read stops.
"""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from backup_pipeline.backup.source import Batch, ReadPlan, read
from backup_pipeline.errors import KafkaUnavailableError
from backup_pipeline.kafka.client import watermarks
from backup_pipeline_tests.fake_consumer import FakeConsumer, Log

TOPIC = "t"


def records(n: int, size: int = 10) -> Log:
    return [bytes([65 + i % 26]) * size for i in range(n)]


def read_all(
    consumer: FakeConsumer,
    start: dict[int, int],
    end: dict[int, int],
    *,
    batch_size: int = 1000,
    batch_bytes: int = 1 << 20,
    max_records: int = 0,
    idle_timeout: float = 5.0,
) -> list[Batch]:
    plan = ReadPlan(start=start, end=end)
    return list(
        read(
            consumer,
            TOPIC,
            plan,
            batch_size=batch_size,
            batch_bytes=batch_bytes,
            max_records=max_records,
            idle_timeout=idle_timeout,
        )
    )


def offsets(batches: list[Batch], partition: int = 0) -> list[int | None]:
    return [m.offset() for b in batches for m in b.messages if m.partition() == partition]


def final_hwms(batches: list[Batch]) -> dict[int, int]:
    hwms: dict[int, int] = {}
    for batch in batches:
        hwms.update(batch.hwms)
    return hwms


def no_records(batches: list[Batch]) -> dict[int, int]:
    total: dict[int, int] = {}
    for batch in batches:
        for partition, n in batch.no_record.items():
            total[partition] = total.get(partition, 0) + n
    return total


def test_reads_from_the_hwm_to_the_captured_end_and_unassigns() -> None:
    consumer = FakeConsumer(TOPIC, {0: records(10)})
    batches = read_all(consumer, {0: 4}, {0: 10})
    assert consumer.assigned == [(0, 4)]
    assert offsets(batches) == [4, 5, 6, 7, 8, 9]
    assert final_hwms(batches) == {0: 9}
    assert no_records(batches) == {}
    assert consumer.unassigned


def test_records_after_the_captured_end_are_left_for_the_next_pass() -> None:
    consumer = FakeConsumer(TOPIC, {0: records(10)})
    batches = read_all(consumer, {0: 0}, {0: 6})
    assert offsets(batches) == [0, 1, 2, 3, 4, 5]
    assert final_hwms(batches) == {0: 5}


def test_markers_between_records_are_counted_as_offsets_without_a_record() -> None:
    log: Log = [b"a", None, b"b", None, None, b"c"]
    batches = read_all(FakeConsumer(TOPIC, {0: log}), {0: 0}, {0: 6})
    assert offsets(batches) == [0, 2, 5]
    assert final_hwms(batches) == {0: 5}
    assert no_records(batches) == {0: 3}


def test_markers_at_the_end_move_the_hwm_to_the_end_through_partition_eof() -> None:
    # A committed transaction ends with its marker: the last offset carries no record, and
    # only EOF tells the reader that it is done. HWM = position - 1, so no phantom lag.
    log: Log = [b"a", b"b", None]
    batches = read_all(FakeConsumer(TOPIC, {0: log}), {0: 0}, {0: 3})
    assert offsets(batches) == [0, 1]
    assert final_hwms(batches) == {0: 2}
    assert no_records(batches) == {0: 1}


def test_a_partition_of_only_markers_yields_an_empty_batch_that_moves_its_hwm() -> None:
    log: Log = [b"a", None, None, None]
    batches = read_all(FakeConsumer(TOPIC, {0: log}), {0: 1}, {0: 4})
    assert [b.messages for b in batches] == [[]]
    assert batches[0].hwms == {0: 3}
    assert batches[0].no_record == {0: 3}


def test_eof_below_the_captured_end_still_ends_the_read() -> None:
    # The end came from a high watermark above an open transaction: the stable offset is
    # where EOF arrives, and the read must end there instead of waiting for the idle bound.
    consumer = FakeConsumer(TOPIC, {0: records(3)})
    batches = read_all(consumer, {0: 0}, {0: 8}, idle_timeout=0.5)
    assert offsets(batches) == [0, 1, 2]
    assert final_hwms(batches) == {0: 2}


def test_partitions_with_nothing_to_read_are_not_assigned() -> None:
    consumer = FakeConsumer(TOPIC, {0: records(5), 1: records(5), 2: records(5)})
    batches = read_all(consumer, {0: 5, 1: 2, 2: 5}, {0: 5, 1: 5, 2: 5})
    assert consumer.assigned == [(1, 2)]
    assert final_hwms(batches) == {1: 4}


def test_a_plan_with_nothing_to_read_assigns_nothing_and_yields_nothing() -> None:
    consumer = FakeConsumer(TOPIC, {0: records(5)})
    assert read_all(consumer, {0: 5}, {0: 5}) == []
    assert consumer.assigned == []
    assert consumer.consume_calls == []


def test_an_idle_partition_beside_a_busy_one_finishes_through_eof() -> None:
    # Partition 1 has no record past its HWM but its captured end is above it (markers).
    consumer = FakeConsumer(TOPIC, {0: records(30), 1: [b"x", None]})
    batches = read_all(consumer, {0: 0, 1: 1}, {0: 30, 1: 2}, batch_size=10)
    assert offsets(batches, 0) == list(range(30))
    assert offsets(batches, 1) == []
    assert final_hwms(batches) == {0: 29, 1: 1}


def test_batches_are_cut_at_batch_size_and_each_moves_the_hwm_of_what_it_holds() -> None:
    batches = read_all(FakeConsumer(TOPIC, {0: records(25)}), {0: 0}, {0: 25}, batch_size=10)
    assert [len(b.messages) for b in batches] == [10, 10, 5]
    assert [b.hwms for b in batches] == [{0: 9}, {0: 19}, {0: 24}]


def test_batches_stay_within_batch_bytes_once_the_record_size_is_known() -> None:
    value_size = 300
    record_bytes = value_size + 8  # the fake's keys are 8 bytes
    consumer = FakeConsumer(TOPIC, {0: records(200, value_size)}, queued=5)
    batches = read_all(consumer, {0: 0}, {0: 200}, batch_bytes=2048)
    assert offsets(batches) == list(range(200))
    for batch in batches:
        assert batch.size_bytes == record_bytes * len(batch.messages)
        # A batch is cut as soon as it reaches batch_bytes: at most one record beyond it.
        assert batch.size_bytes < 2048 + record_bytes
    # After the first poll, read asks only for what fits in the rest of the batch.
    assert max(consumer.consume_calls[1:]) <= 2048 // record_bytes + 1


def test_max_records_stops_the_read_with_the_hwm_at_the_last_record_taken() -> None:
    consumer = FakeConsumer(TOPIC, {0: records(20), 1: records(20)})
    batches = read_all(consumer, {0: 0, 1: 0}, {0: 20, 1: 20}, batch_size=4, max_records=7)
    taken = sum(len(b.messages) for b in batches)
    assert taken == 7
    hwms = final_hwms(batches)
    for partition in (0, 1):
        taken_here = offsets(batches, partition)
        assert taken_here == list(range(len(taken_here)))
        if taken_here:
            assert hwms[partition] == taken_here[-1]
    assert consumer.unassigned


def test_a_partition_that_delivers_nothing_fails_the_read_after_the_idle_bound() -> None:
    consumer = FakeConsumer(TOPIC, {0: records(3), 1: records(3)}, silent={1})
    plan = ReadPlan(start={0: 0, 1: 0}, end={0: 3, 1: 3})
    reader = read(consumer, TOPIC, plan, batch_size=100, batch_bytes=1 << 20, idle_timeout=0.05)
    with pytest.raises(KafkaUnavailableError, match=r"no progress reading t partitions 1 for"):
        list(reader)
    assert consumer.unassigned


def test_retriable_errors_are_passed_over_and_fatal_ones_fail_the_read() -> None:
    transient = KafkaError(KafkaError._TRANSPORT, "broker went away", retriable=True)
    consumer = FakeConsumer(TOPIC, {0: records(3)}, errors=[transient])
    assert offsets(read_all(consumer, {0: 0}, {0: 3})) == [0, 1, 2]

    fatal = KafkaError(KafkaError._FATAL, "fenced", fatal=True)
    consumer = FakeConsumer(TOPIC, {0: records(3)}, errors=[fatal])
    with pytest.raises(KafkaUnavailableError, match="reading t: fenced"):
        read_all(consumer, {0: 0}, {0: 3})
    assert consumer.unassigned


def test_a_finished_partition_is_paused_and_its_late_eof_ignored() -> None:
    consumer = FakeConsumer(TOPIC, {0: records(4), 1: records(8)})
    batches = read_all(consumer, {0: 0, 1: 0}, {0: 2, 1: 8}, batch_size=100)
    assert 0 in consumer.paused
    assert offsets(batches, 0) == [0, 1]
    assert final_hwms(batches) == {0: 1, 1: 7}


def test_a_second_read_on_the_same_consumer_reads_what_the_first_one_paused() -> None:
    # A follow run reads pass after pass with one consumer; librdkafka keeps the pause the
    # first pass put on a finished partition across unassign/assign.
    consumer = FakeConsumer(TOPIC, {0: records(3)})
    assert offsets(read_all(consumer, {0: 0}, {0: 2})) == [0, 1]
    assert offsets(read_all(consumer, {0: 2}, {0: 3})) == [2]


class Watermarks:
    """get_watermark_offsets that fails with ``errors`` first, then answers (0, 10)."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.calls = 0

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return 0, 10


def test_a_moving_partition_leader_is_waited_out_when_reading_watermarks() -> None:
    consumer = Watermarks(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
    marks = watermarks(consumer, TOPIC, 0, timeout=10)
    assert (marks.log_start, marks.end, consumer.calls) == (0, 10, 3)


def test_other_watermark_errors_fail_at_once_and_a_lasting_move_after_the_timeout() -> None:
    consumer = Watermarks(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaUnavailableError, match=r"cannot read offsets of t\[0\].*AUTHORIZ"):
        watermarks(consumer, TOPIC, 0, timeout=10)
    assert consumer.calls == 1
    moving = Watermarks(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)
    with pytest.raises(KafkaUnavailableError, match="NOT_LEADER_FOR_PARTITION"):
        watermarks(moving, TOPIC, 0, timeout=0.5)
    assert 1 < moving.calls < 1000
