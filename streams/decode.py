"""The decode step every flow starts with: raw Kafka batches -> valid events + dead letters."""

from __future__ import annotations

from dataclasses import dataclass

from bytewax.connectors.kafka import KafkaSinkMessage

from streams.errors import EventError
from streams.events import Event, dead_letter, decode_event, encode_dead_letter
from streams.kafka_io import RawBatch


@dataclass(frozen=True, slots=True)
class Decoded:
    """The valid events of one raw batch (in offset order) and its encoded dead letters."""

    topic: str
    partition: int
    last_offset: int
    events: list[Event]
    dead: list[KafkaSinkMessage[bytes | None, bytes]]


def decode_batch(batch: RawBatch, flow: str, max_bytes: int) -> Decoded:
    """Decode every message of `batch`; failures become dead letters naming the field."""
    events: list[Event] = []
    dead: list[KafkaSinkMessage[bytes | None, bytes]] = []
    for key, value, offset in zip(batch.keys, batch.values, batch.offsets, strict=True):
        try:
            events.append(decode_event(value, max_bytes))
        except EventError as exc:
            record = dead_letter(value, exc, flow, batch.topic, batch.partition, offset)
            dead.append(KafkaSinkMessage(key, encode_dead_letter(record)))
    return Decoded(batch.topic, batch.partition, batch.offsets[-1], events, dead)
