"""The record mapping: keys, traceparent, JSON events, and what goes to quarantine."""

from __future__ import annotations

import base64
import json
import struct
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from backup_pipeline.backup import records
from backup_pipeline.backup.records import KafkaMessage, map_messages
from backup_pipeline.topics import ValueFormat
from backup_pipeline_tests.fakes import FakeMessage

KEY = struct.pack(">q", -42)
EVENT = b'{"hendelseId":"h","arbeidssoekerId":12345,"hendelseType":"bekreftelse.x"}'
TP = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def one(message: FakeMessage, value_format: ValueFormat = ValueFormat.JSON_EVENT):
    return map_messages([message], value_format, 7, "topic")


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_key_is_a_signed_big_endian_long(n):
    assert records.decode_key(struct.pack(">q", n)) == n


@given(st.binary().filter(lambda b: len(b) != 8))
def test_a_key_that_is_not_8_bytes_has_no_record_key(key):
    assert records.decode_key(key) is None


@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=20), st.one_of(st.none(), st.binary(max_size=50))),
        max_size=8,
    )
)
def test_headers_round_trip_losslessly(headers):
    assert records.decode_headers(records.header_columns(headers)[2].json) == headers


def test_the_last_traceparent_counts():
    trace, dropped, _ = records.header_columns(
        [("traceparent", b"first"), ("x", b"y"), ("traceparent", TP)]
    )
    assert (trace, dropped) == (TP.decode(), False)


def test_a_timestamp_beyond_year_9999_is_stored_as_null_with_a_warning():
    # Kafka accepts any long as CreateTime; the record must not stall the pass.
    far = FakeMessage(KEY, EVENT, [("traceparent", TP)], timestamp_=(1, 2**62))
    batch = one(far, ValueFormat.BYTES)
    assert len(batch.rows) == 1 and batch.quarantine == []
    assert batch.rows[0][6:8] == (None, None)  # kafka_timestamp, kafka_timestamp_type
    assert batch.warnings == 1 and batch.per_partition[0] == [1, 0, 1]
    normal = one(FakeMessage(KEY, EVENT, [("traceparent", TP)]), ValueFormat.BYTES)
    assert normal.warnings == 0 and normal.rows[0][7] == 1


def test_no_traceparent_is_null_without_a_warning():
    assert records.header_columns([("x", b"y")])[:2] == (None, False)
    assert records.header_columns(None)[:2] == (None, False)


def test_a_traceparent_longer_than_58_chars_is_kept_in_headers_and_warned():
    long_tp = b"00-" + b"a" * 60
    batch = one(FakeMessage(KEY, EVENT, [("traceparent", long_tp)]))
    assert len(batch.rows) == 1 and not batch.quarantine
    row = dict(
        zip([c for c, _ in records.columns(ValueFormat.JSON_EVENT)], batch.rows[0], strict=True)
    )
    assert row["traceparent"] is None
    assert records.decode_headers(row["headers"].json) == [("traceparent", long_tp)]
    assert batch.warnings == 1


def test_a_json_event_becomes_a_row_with_its_arbeidssoeker_id():
    batch = one(FakeMessage(KEY, EVENT, [("traceparent", TP)], partition_=2, offset_=9))
    (row,) = batch.rows
    named = dict(zip([c for c, _ in records.columns(ValueFormat.JSON_EVENT)], row, strict=True))
    assert named["version"] == 7 and named["kafka_partition"] == 2
    assert named["kafka_offset"] == 9 and named["record_key"] == -42
    assert named["arbeidssoeker_id"] == 12345 and named["traceparent"] == TP.decode()
    assert named["data"].json == EVENT and named["kafka_value"] == EVENT
    assert named["kafka_timestamp"] == datetime(2025, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)
    assert named["kafka_timestamp_type"] == 1


def test_avro_bytes_are_stored_verbatim():
    value = b"\x00\x00\x00\x00\x65" + bytes(range(256))
    (row,) = one(FakeMessage(KEY, value), ValueFormat.BYTES).rows
    named = dict(zip([c for c, _ in records.columns(ValueFormat.BYTES)], row, strict=True))
    assert named["data"] == value


BAD_EVENTS = {
    b"not json": "not valid JSON",
    b"[1, 2]": "not an object",
    b'"text"': "not an object",
    b'{"hendelseType":"x"}': "no arbeidssoekerId",
    b'{"arbeidssoekerId":"12"}': "not an integer",
    b'{"arbeidssoekerId":12.5}': "not an integer",
    b'{"arbeidssoekerId":true}': "not an integer",
    b'{"arbeidssoekerId":null}': "not an integer",
    b'{"arbeidssoekerId":99999999999999999999}': "does not fit in bigint",
    b'{"arbeidssoekerId":1,"x":NaN}': "not valid JSON",
    b'{"arbeidssoekerId":1,"x":"\\u0000"}': "\\u0000",
    b'{"arbeidssoekerId":1,"x":"\\ud800"}': "surrogate",
    b'{"arbeidssoekerId":1,"x":"\xff"}': "not valid UTF-8",
}


def test_every_bad_json_event_goes_to_quarantine_with_a_reason():
    for value, reason in BAD_EVENTS.items():
        batch = one(FakeMessage(KEY, value, [("traceparent", TP)], offset_=3))
        assert not batch.rows, value
        (q,) = batch.quarantine
        assert reason in q[4], (value, q[4])
        assert q[5] == KEY and q[6] == value and q[3] == 3  # raw key, raw value, offset


def test_an_escaped_backslash_before_u0000_is_not_a_nul():
    value = b'{"arbeidssoekerId":1,"x":"\\\\u0000"}'  # a literal backslash, then u0000
    assert records.parse_event(value) == (1, None)


def test_header_encoding_matches_the_json_module():
    headers = [
        ("traceparent", b"00-ab"),
        ('n\u00f8kkel "q"', None),
        ("bin", bytes(range(256))),
        ("traceparent", b""),
    ]
    expected = json.dumps(
        [[n, None if v is None else base64.b64encode(v).decode()] for n, v in headers],
        separators=(",", ":"),
    ).encode()
    assert records.header_columns(headers)[2].json == expected
    assert records.header_columns(None)[2].json == b"[]"


def test_tombstones_and_bad_keys_go_to_quarantine_in_every_table():
    for value_format in ValueFormat:
        for key, value, reason in [
            (KEY, None, "tombstone"),
            (None, EVENT, "key is null"),
            (b"1234", EVENT, "4 bytes"),
        ]:
            batch = one(FakeMessage(key, value), value_format)
            assert not batch.rows
            assert reason in batch.quarantine[0][4]


@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.binary(min_size=8, max_size=8), st.binary(max_size=12)),
            st.one_of(st.none(), st.just(EVENT), st.binary(max_size=40)),
        ),
        max_size=30,
    )
)
def test_every_message_becomes_exactly_one_row_or_one_quarantine_row(pairs):
    messages: list[KafkaMessage] = [FakeMessage(k, v, offset_=i) for i, (k, v) in enumerate(pairs)]
    for value_format in ValueFormat:
        batch = map_messages(messages, value_format, 1, "t")
        offsets = sorted([r[2] for r in batch.rows] + [q[3] for q in batch.quarantine])
        assert offsets == list(range(len(messages)))


def test_a_record_without_timestamp_has_null_timestamp():
    (row,) = one(FakeMessage(KEY, b"x", timestamp_=(0, -1)), ValueFormat.BYTES).rows
    assert row[6] is None and row[7] is None


def test_demo_events_are_storable_json():
    import random

    from backup_pipeline.demo.data import event_value

    rng = random.Random(1)
    for _ in range(200):
        value = event_value(rng)
        person, reason = records.parse_event(value)
        assert reason is None and person == json.loads(value)["arbeidssoekerId"]


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.dictionaries(st.text(max_size=8), _json_values, max_size=5),
    st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=3), st.none()),
)
def test_the_fast_json_path_agrees_with_the_careful_one(event, person):
    event["arbeidssoekerId"] = person
    value = json.dumps(event).encode()
    assert records.parse_event(value)[0] == records._parse_event_carefully(value)[0]
