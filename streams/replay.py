"""Replay a source into the `interactions` topic in event-time order, keyed by user_id.

Generating and encoding in a forked child process was measured (bench/replay.py) and brought
nothing on this 2-core machine, where the broker needs the second core: replay is one process.
Sources with an `encoded()` method (the synthetic one) hand over ready Kafka messages.

A replay fails fast rather than queueing into the void: it asks the broker for metadata before
producing (`BROKER_WAIT_S`), and when the client reports every broker down it asks again and
stops if there is still no answer. The client's own log lines go to the `streams.replay.kafka`
logger (silent unless logging is configured: `streamrec --debug`), not to stderr.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from confluent_kafka import KafkaError as ClientError
from confluent_kafka import KafkaException, Producer

from streams.config import Broker
from streams.errors import KafkaError
from streams.events import encode_event
from streams.kafka_io import make_producer
from streams.sources import EncodedBatch, EventSource

BROKER_WAIT_S = 5.0
"""How long a replay waits for the broker's answer to a metadata request: before it produces
anything, and again whenever the client reports every broker down."""

KAFKA_LOG = logging.getLogger("streams.replay.kafka")
"""Where the producer's client logs go (librdkafka's connection failures, retries)."""
KAFKA_LOG.addHandler(logging.NullHandler())

_BROKER_DOWN = frozenset({"_ALL_BROKERS_DOWN", "_TRANSPORT", "_RESOLVE"})
"""Client errors that mean the broker may be gone (confluent_kafka.KafkaError names)."""


class _Broker:
    """Watches the producer's client errors; `check` asks the broker again after one said it
    was gone, and raises if it still does not answer."""

    def __init__(self, bootstrap: Broker, topic: str) -> None:
        self.bootstrap, self.topic = bootstrap, topic
        self.suspect: str | None = None
        self.fatal: str | None = None

    def on_error(self, error: ClientError) -> None:
        """The client's `error_cb`."""
        if error.fatal():
            self.fatal = error.str()
        elif error.name() in _BROKER_DOWN:
            self.suspect = error.str()

    def check(self, producer: Producer, always: bool = False) -> None:
        """Raise `KafkaError` on a fatal client error, or when the broker does not answer a
        metadata request within `BROKER_WAIT_S` (asked when `always` or after a reported loss).
        """
        if self.fatal is not None:
            raise KafkaError(
                f"replay to {self.topic!r} on {self.bootstrap} failed: {self.fatal}; "
                "check the broker (`streamrec infra status`) and replay again"
            )
        if not always and self.suspect is None:
            return
        try:
            producer.list_topics(timeout=BROKER_WAIT_S)
        except KafkaException as exc:
            detail = exc.args[0].str() if exc.args else str(exc)
            raise KafkaError(
                f"no Kafka broker answers at {self.bootstrap} within {BROKER_WAIT_S:g} s "
                f"({detail}); start it or fix the address (`streamrec infra status`), then "
                "replay again"
            ) from None
        self.suspect = None


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
    bootstrap: Broker,
    topic: str,
    rate: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Produce every event of `source` to `topic`, in order, and wait until all are delivered.

    Args:
        rate: events per second to pace at (event-time order kept); None = as fast as possible.
        on_progress: called with the number of events produced since the last call.

    Raises:
        KafkaError: when the broker did not acknowledge every event, does not answer before the
            replay starts (within `BROKER_WAIT_S`), or stops answering during it.
    """
    failures: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    # Only failed deliveries call back (a Python call per delivered message costs ~20 %), and
    # the callback is the producer's default rather than an argument of every produce call.
    broker = _Broker(bootstrap, topic)
    producer = make_producer(
        bootstrap,
        **{
            "delivery.report.only.error": True,
            "on_delivery": delivered,
            "error_cb": broker.on_error,
            "logger": KAFKA_LOG,
        },
    )
    try:
        broker.check(producer, always=True)
        start = time.perf_counter()
        report = _produce(producer, broker, source, topic, rate, on_progress)
        remaining = producer.flush(0)
        deadline = time.monotonic() + FLUSH_S
        while remaining and time.monotonic() < deadline:
            broker.check(producer)
            remaining = producer.flush(0.5)
        report.seconds = time.perf_counter() - start
    finally:
        producer.purge()  # what is still queued after a failure; close would wait for it
        producer.close()
    if remaining or failures:
        raise KafkaError(
            f"{remaining} event(s) not delivered and {len(failures)} failed to {topic!r}"
            f"{': ' + failures[0] if failures else ''}; check the broker (`streamrec infra status`)"
        )
    return report


FLUSH_S = 60.0
"""How long a replay waits for the last acknowledgements (the broker answering)."""


def _produce(
    producer: Producer,
    broker: _Broker,
    source: EventSource,
    topic: str,
    rate: float | None,
    on_progress: Callable[[int], None] | None,
) -> ReplayReport:
    """Produce every event of `source` to `topic` (paced at `rate`), without waiting for the
    acknowledgements."""
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
                        broker.check(producer)
            producer.poll(0)
            broker.check(producer)
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
    return report
