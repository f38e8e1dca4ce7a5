"""Read a topic to its end and summarise it: events by type, dead letters by reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from streams.config import Broker
from streams.errors import EventError
from streams.events import decode_dead_letter, decode_event
from streams.kafka_io import read_to_end


@dataclass
class TopicSummary:
    """Counts over one topic."""

    messages: int = 0
    by_type: Counter = field(default_factory=Counter)
    invalid: Counter = field(default_factory=Counter)
    first_ts: int | None = None
    last_ts: int | None = None


def summarize_events(bootstrap: Broker, topic: str) -> TopicSummary:
    """Count the events in `topic` by type (invalid ones by reason)."""
    out = TopicSummary()
    for batch in read_to_end(bootstrap, topic):
        for record in batch:
            out.messages += 1
            try:
                event = decode_event(record.value, max_bytes=1 << 30)
            except EventError as exc:
                out.invalid[exc.reason] += 1
                continue
            out.by_type[event.type] += 1
            out.first_ts = event.ts if out.first_ts is None else min(out.first_ts, event.ts)
            out.last_ts = event.ts if out.last_ts is None else max(out.last_ts, event.ts)
    return out


def summarize_dead_letters(bootstrap: Broker, topic: str) -> Counter:
    """Count the dead letters in `topic` by (reason, field)."""
    counts: Counter = Counter()
    for batch in read_to_end(bootstrap, topic):
        for record in batch:
            letter = decode_dead_letter(record.value)
            counts[(letter.reason, letter.field)] += 1
    return counts
