"""Against the real broker: every malformed family lands in the DLQ; valid events are all kept."""

from __future__ import annotations

from collections import Counter

from bytewax.connectors.kafka import KafkaSink
from bytewax.testing import TestingSink, run_main

from infra.stack import ensure_topics
from streams.config import EventLimits
from streams.events import EVENT_TYPES, decode_dead_letter, decode_event, encode_event
from streams.kafka_io import KafkaBatchSource, make_producer, read_to_end
from streams.validate import build_flow
from tests.streams.helpers import MALFORMED, make_event


def _produce(bootstrap: str, topic: str, items: list[tuple[bytes, bytes]]) -> None:
    producer = make_producer(bootstrap)
    for key, value in items:
        producer.produce(topic, value, key)
    assert producer.flush(30) == 0
    producer.close()


def test_every_type_round_trips_through_the_broker(bootstrap: str, topic_name: str) -> None:
    ensure_topics(bootstrap, [topic_name], 2)
    sent = [make_event(kind, i) for i, kind in enumerate(EVENT_TYPES * 3)]
    _produce(bootstrap, topic_name, [(e.user_id.encode(), encode_event(e)) for e in sent])
    received = [decode_event(r.value) for b in read_to_end(bootstrap, topic_name) for r in b]
    assert sorted(received, key=lambda e: e.event_id) == sorted(sent, key=lambda e: e.event_id)


def test_malformed_events_go_to_dlq_and_valid_ones_are_kept(
    bootstrap: str, topic_name: str
) -> None:
    source_topic, dlq_topic = topic_name, f"{topic_name}.dlq"
    ensure_topics(bootstrap, [source_topic, dlq_topic], 3)
    items: list[tuple[bytes, bytes]] = []
    expected_types: Counter = Counter()
    for i, (raw, _, _) in enumerate(MALFORMED):
        # Valid events on both sides of every bad one, on the same key (same partition).
        for kind in (EVENT_TYPES[i % len(EVENT_TYPES)], EVENT_TYPES[(i + 3) % len(EVENT_TYPES)]):
            event = make_event(kind, i)
            items.append((b"k%d" % i, encode_event(event)))
            expected_types[kind] += 1
            if kind == EVENT_TYPES[i % len(EVENT_TYPES)]:
                items.append((b"k%d" % i, raw))
    _produce(bootstrap, source_topic, items)

    out: list = []
    flow = build_flow(
        KafkaBatchSource(bootstrap, source_topic, tail=False, batch=4),
        TestingSink(out),
        KafkaSink([bootstrap], dlq_topic),
        EventLimits(max_bytes=16_384),
    )
    run_main(flow)

    totals: Counter = Counter()
    for _, counts in out:
        totals.update(counts)
    assert totals == expected_types

    letters = [decode_dead_letter(r.value) for b in read_to_end(bootstrap, dlq_topic) for r in b]
    by_original = {letter.original: letter for letter in letters}
    assert len(letters) == len(MALFORMED)
    for raw, reason, field in MALFORMED:
        letter = by_original[raw]
        assert (letter.reason, letter.field) == (reason, field)
        assert letter.source_topic == source_topic
        assert letter.flow == "validate"
        assert letter.offset is not None and letter.partition is not None
