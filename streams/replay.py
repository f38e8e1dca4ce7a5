"""Replay a source into the `interactions` topic in event-time order, keyed by user_id.

Generating and encoding in a forked child process was measured (bench/replay.py) and brought
nothing on this 2-core machine, where the broker needs the second core: replay is one process.
Sources with an `encoded()` method (the synthetic one) hand over ready Kafka messages.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from streams.errors import KafkaError
from streams.events import encode_event
from streams.kafka_io import make_producer
from streams.sources import EncodedBatch, EventSource


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


def encoded_batches(source: EventSource) -> Iterator[EncodedBatch]:
    """Yield the source's batches as Kafka messages (its own `encoded()` where it has one)."""
    encoded = getattr(source, "encoded", None)
    if encoded is not None:
        yield from (b for b in encoded() if b.values)
        return
    for batch in source.batches():
        if batch:
            yield EncodedBatch(
                [e.user_id.encode() for e in batch],
                [encode_event(e) for e in batch],
                dict(Counter(e.type for e in batch)),
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
    failures: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    # Only failed deliveries call back (a Python call per delivered message costs ~20 %), and
    # the callback is the producer's default rather than an argument of every produce call.
    producer = make_producer(
        bootstrap, **{"delivery.report.only.error": True, "on_delivery": delivered}
    )

    report = ReplayReport()
    produce = producer.produce
    start = time.perf_counter()
    for keys, values, counts, first_ts, last_ts in encoded_batches(source):
        chunk = max(1, int(rate // 50)) if rate else len(values)
        for lo in range(0, len(values), chunk):
            sent = min(len(values), lo + chunk)
            # unpaced: the whole batch, without slicing copies
            part = (
                zip(keys[lo:sent], values[lo:sent], strict=True)
                if rate
                else zip(keys, values, strict=True)
            )
            for key, value in part:
                while True:
                    try:
                        produce(topic, value, key)
                        break
                    except BufferError:  # local queue full: let the client send, then retry
                        producer.poll(0.05)
            producer.poll(0)
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
        report.by_type.update(counts)
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
