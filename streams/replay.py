"""Replay a source into the `interactions` topic in event-time order, keyed by user_id.

Generating and encoding in a forked child process was measured (bench/replay.py) and brought
nothing on this 2-core machine, where the broker needs the second core: replay is one process.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from streams.errors import KafkaError
from streams.events import encode_event
from streams.kafka_io import make_producer
from streams.sources import EventSource

Encoded = tuple[list[bytes], list[bytes], list[str], int, int]


@dataclass
class ReplayReport:
    """What a replay produced."""

    events: int = 0
    seconds: float = 0.0
    by_type: Counter = field(default_factory=Counter)
    first_ts: int | None = None
    last_ts: int | None = None

    @property
    def rate(self) -> float:
        """Events per second, wall clock."""
        return self.events / self.seconds if self.seconds else 0.0


def encoded_batches(source: EventSource) -> Iterator[Encoded]:
    """Yield (keys, values, types, first_ts, last_ts) per source batch."""
    for batch in source.batches():
        if batch:
            yield (
                [e.user_id.encode() for e in batch],
                [encode_event(e) for e in batch],
                [e.type for e in batch],
                batch[0].ts,
                batch[-1].ts,
            )


def replay(
    source: EventSource,
    bootstrap: str,
    topic: str,
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Produce every event of `source` to `topic`, in order, and wait until all are delivered.

    Args:
        rate: events per second to pace at (event-time order kept); None = as fast as possible.
        on_progress: called with the number of events produced since the last call.

    Raises:
        KafkaError: when the broker did not acknowledge every event.
    """
    # Only failed deliveries call back: a Python call per delivered message costs ~20 %.
    producer = make_producer(bootstrap, **{"delivery.report.only.error": True})
    failures: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    report = ReplayReport()
    produce = producer.produce
    start = time.perf_counter()
    for keys, values, types, first_ts, last_ts in encoded_batches(source):
        chunk = max(1, int(rate // 50)) if rate else len(values)
        for lo in range(0, len(values), chunk):
            for i in range(lo, min(len(values), lo + chunk)):
                while True:
                    try:
                        produce(topic, values[i], keys[i], on_delivery=delivered)
                        break
                    except BufferError:  # local queue full: let the client send, then retry
                        producer.poll(0.05)
            producer.poll(0)
            sent = min(len(values), lo + chunk)
            if rate:
                due = start + (report.events + sent) / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            if on_progress:
                on_progress(sent - lo)
        if report.first_ts is None:
            report.first_ts = first_ts
        report.events += len(values)
        report.by_type.update(types)
        report.last_ts = last_ts
    remaining = producer.flush(60)
    producer.close()
    report.seconds = time.perf_counter() - start
    if remaining or failures:
        raise KafkaError(
            f"{remaining} event(s) not delivered and {len(failures)} failed to {topic!r}"
            f"{': ' + failures[0] if failures else ''}; check the broker (`streamrec infra status`)"
        )
    return report
