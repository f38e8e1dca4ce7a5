"""Kafka plumbing shared by the jobs: client settings, a batch source for Bytewax, topic readers.

Every reader detects the end of a topic by partition EOF (as Bytewax's `tail=False` does), never
by comparing offsets with the reported high watermark: Tansu's watermark can lag the last batch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from streams.errors import KafkaError as StreamsKafkaError

PRODUCER_DEFAULTS = {
    "linger.ms": 20,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "partitioner": "murmur2_random",
    "enable.idempotence": False,
}


def make_producer(bootstrap: str, **overrides: object) -> Producer:
    """Return a confluent-kafka producer tuned for throughput (murmur2 key partitioning)."""
    return Producer({"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, **overrides})


def make_consumer(bootstrap: str, **overrides: object) -> Consumer:
    """Return a consumer for `assign`-based reads (no group join), reporting partition EOF."""
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": "streamrec-reader",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        **overrides,
    }
    return Consumer(conf)


def partitions_of(bootstrap: str, topic: str, timeout: float = 10.0) -> list[int]:
    """Return the partition ids of `topic`.

    Raises:
        StreamsKafkaError: the topic does not exist (run `streamrec infra up`).
    """
    consumer = make_consumer(bootstrap)
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    finally:
        consumer.close()
    if meta is None or meta.error is not None or not meta.partitions:
        raise StreamsKafkaError(
            f"topic {topic!r} does not exist on {bootstrap}: run `streamrec infra up` "
            "(it creates the configured topics)"
        )
    return sorted(meta.partitions)


@dataclass(frozen=True)
class Record:
    """One message read from a topic."""

    key: bytes | None
    value: bytes
    partition: int
    offset: int


def read_to_end(
    bootstrap: str, topic: str, batch: int = 10_000, idle_timeout: float = 30.0
) -> Iterator[list[Record]]:
    """Yield every message now in `topic`, batch by batch, stopping at EOF on every partition.

    Args:
        idle_timeout: give up (raise) if no message or EOF arrives for this long.
    """
    parts = partitions_of(bootstrap, topic)
    consumer = make_consumer(bootstrap)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    at_end: set[int] = set()
    last_seen = time.monotonic()
    try:
        while len(at_end) < len(parts):
            # consume() waits its whole timeout unless `batch` messages arrive, so poll briefly.
            messages = consumer.consume(batch, 0.1)
            if not messages:
                if time.monotonic() - last_seen > idle_timeout:
                    raise StreamsKafkaError(
                        f"no message or end-of-partition from {topic!r} in {idle_timeout} s"
                    )
                continue
            last_seen = time.monotonic()
            out = []
            for m in messages:
                err = m.error()
                if err is None:
                    out.append(Record(m.key(), m.value(), m.partition(), m.offset()))
                    at_end.discard(m.partition())
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
                else:
                    raise StreamsKafkaError(f"reading {topic!r}: {err}")
            if out:
                yield out
    finally:
        consumer.close()


@dataclass(frozen=True, slots=True)
class RawBatch:
    """Consecutive messages of one partition, as one dataflow item (columnar, picklable)."""

    topic: str
    partition: int
    keys: list[bytes | None]
    values: list[bytes]
    offsets: list[int]


class _BatchPartition(StatefulSourcePartition[RawBatch, int]):
    """Reads one partition; emits one `RawBatch` per poll; its state is the next offset."""

    def __init__(
        self, config: dict, topic: str, partition: int, offset: int, batch: int, tail: bool
    ) -> None:
        self._consumer = Consumer(config)
        self._consumer.assign([TopicPartition(topic, partition, offset)])
        self._topic, self._partition, self._offset = topic, partition, offset
        self._batch, self._tail = batch, tail
        self._eof = False
        self._idle_until: datetime | None = None

    def next_batch(self) -> list[RawBatch]:
        if self._eof:
            raise StopIteration
        messages = self._consumer.consume(self._batch, 0.001)
        keys: list[bytes | None] = []
        values: list[bytes] = []
        offsets: list[int] = []
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = not self._tail
                    continue
                raise StreamsKafkaError(f"reading {self._topic!r}[{self._partition}]: {err}")
            keys.append(m.key())
            values.append(m.value() or b"")
            offsets.append(m.offset())
        if not offsets:
            self._idle_until = datetime.now(UTC) + IDLE_BACKOFF
            return []
        self._idle_until = None
        self._offset = offsets[-1] + 1
        return [RawBatch(self._topic, self._partition, keys, values, offsets)]

    def next_awake(self) -> datetime | None:
        return self._idle_until

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


IDLE_BACKOFF = timedelta(milliseconds=5)


class KafkaBatchSource(FixedPartitionedSource[RawBatch, int]):
    """A Bytewax source over one topic that emits whole poll batches (`RawBatch`) as items.

    Bytewax's own `KafkaSource` emits every message as an item, and the per-item cost of the
    dataflow then dominates; one item per poll lets operators work on columns. Partitions are
    the unit of parallelism; the recovery state of a partition is its next offset.

    Args:
        tail: keep waiting for new messages (True) or stop at the end of every partition as it
            was when reached (False, the bounded `--until-end` mode).
        batch: most messages per item.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        tail: bool = True,
        batch: int = 5_000,
        starting_offset: int = OFFSET_BEGINNING,
    ) -> None:
        self._bootstrap, self._topic, self._tail = bootstrap, topic, tail
        self._batch, self._start = batch, starting_offset

    def list_parts(self) -> list[str]:
        return [str(p) for p in partitions_of(self._bootstrap, self._topic)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _BatchPartition:
        del step_id  # the partition name alone identifies the state
        config = {
            "bootstrap.servers": self._bootstrap,
            "group.id": "streamrec-bytewax",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
        offset = self._start if resume_state is None else resume_state
        return _BatchPartition(config, self._topic, int(for_part), offset, self._batch, self._tail)
