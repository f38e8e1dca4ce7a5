"""The decode step every flow starts with: raw Kafka batches -> valid events + dead letters."""

from __future__ import annotations

from dataclasses import dataclass, field

from bytewax.connectors.kafka import KafkaSinkMessage

from streams.errors import EventError
from streams.events import Event, dead_letter, decode_event, encode_dead_letter
from streams.kafka_io import RawBatch


@dataclass(frozen=True, slots=True)
class Decoded:
    """The valid events of one raw batch (in offset order) and its encoded dead letters.

    `raw`, `keys` and `offsets` are the Kafka value, key and offset of each valid event, so a
    later step that refuses one can dead-letter the bytes produced, where they came from.
    """

    topic: str
    partition: int
    last_offset: int
    events: list[Event]
    dead: list[KafkaSinkMessage[bytes | None, bytes]]
    raw: list[bytes] = field(default_factory=list)
    keys: list[bytes | None] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)


def decode_batch(batch: RawBatch, flow: str, max_bytes: int) -> Decoded:
    """Decode every message of `batch`; failures become dead letters naming the field."""
    events: list[Event] = []
    dead: list[KafkaSinkMessage[bytes | None, bytes]] = []
    raw: list[bytes] = []
    keys: list[bytes | None] = []
    offsets: list[int] = []
    for key, value, offset in zip(batch.keys, batch.values, batch.offsets, strict=True):
        try:
            events.append(decode_event(value, max_bytes))
        except EventError as exc:
            record = dead_letter(value, exc, flow, batch.topic, batch.partition, offset)
            dead.append(KafkaSinkMessage(key, encode_dead_letter(record)))
            continue
        raw.append(value)
        keys.append(key)
        offsets.append(offset)
    last = batch.offsets[-1]
    return Decoded(batch.topic, batch.partition, last, events, dead, raw, keys, offsets)
