"""Kafka plumbing shared by the jobs: client settings, a batch source for Bytewax, topic readers.

Every reader detects the end of a topic by partition EOF (as Bytewax's `tail=False` does), never
by comparing offsets with the reported high watermark: Tansu's watermark can lag the last batch.

A resumed reader first checks that its offsets belong to the log it reads (`verify_mark`): a
broker that lost its storage recreates a topic under the same name, and old offsets would skip
the new log's first events silently, or wait forever beyond its end (docs/operations.md).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from streams import metrics
from streams.config import Broker, connection
from streams.errors import KafkaError as StreamsKafkaError
from streams.errors import LogMismatchError

DURABLE = {"acks": "all", "enable.idempotence": True}
"""Every producer's delivery guarantee: acknowledged by all in-sync replicas, no duplicate or
reordered batch on a retry. Also the `add_config` of Bytewax's `KafkaSink` (DLQ, samples)."""

QUIET = {"log_level": 4}
"""librdkafka logs warnings and errors only (syslog level 4): its informational lines (e.g.
`BGQUEUE ... Purging 1 unserved events` when a client closes) say nothing an operator acts on."""

PRODUCER_DEFAULTS = {
    "linger.ms": 20,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    "partitioner": "murmur2_random",
    **DURABLE,
    **QUIET,
}

SINK_CONFIG = {k: str(v).lower() for k, v in {**DURABLE, **QUIET}.items()}
"""`DURABLE` as the string map `bytewax.connectors.kafka.KafkaSink(add_config=...)` takes."""

OUT_OF_RANGE = "error"
"""`auto.offset.reset` of every consumer: an offset outside the log is an error, never a silent
jump to either end (which would re-read or skip)."""


_CONNECTION = ("bootstrap.servers", "security.", "sasl.", "ssl.")
"""The librdkafka properties that say where a broker is and how to talk to it."""


def client_config(broker: Broker | dict, **overrides: object) -> dict:
    """librdkafka properties for a client of `broker`: where it is and its security settings
    (from a `KafkaConnection`, or the connection part of another client's config), then
    `overrides`."""
    if isinstance(broker, dict):
        base = {k: v for k, v in broker.items() if k.startswith(_CONNECTION)}
    else:
        base = connection(broker).librdkafka()
    return {**base, **overrides}


def _where(broker: Broker | dict) -> str:
    """The host:port of `broker`, for messages (never its secrets)."""
    return broker["bootstrap.servers"] if isinstance(broker, dict) else str(broker)


def make_producer(bootstrap: Broker, **overrides: object) -> Producer:
    """Return a confluent-kafka producer tuned for throughput (murmur2 key partitioning)."""
    return Producer(client_config(bootstrap, **{**PRODUCER_DEFAULTS, **overrides}))


def make_consumer(bootstrap: Broker, **overrides: object) -> Consumer:
    """Return a consumer for `assign`-based reads (no group join), reporting partition EOF."""
    conf = {
        **client_config(bootstrap),
        "group.id": "streamrec-reader",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": OUT_OF_RANGE,
        **QUIET,
        **overrides,
    }
    return Consumer(conf)


def partitions_of(bootstrap: Broker, topic: str, timeout: float = 10.0) -> list[int]:
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
    bootstrap: Broker, topic: str, batch: int = 10_000, idle_timeout: float = 30.0
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


RESET_HINT = "streamrec run <job> --reset earliest"
PROBE_TIMEOUT_S = 5.0
"""How long a check waits for the record before a resume offset; past it, the offset lies beyond
the partition's end (Tansu answers a fetch beyond the end with nothing, not OFFSET_OUT_OF_RANGE)."""
RECHECK_IDLE_S = 10.0
"""A reader that got nothing (no message, no end of partition) this long checks its log again."""
METER_EVERY_S = 1.0
"""How often a partition reader updates its position, log end and lag gauges (at most)."""


def group_id(job: str) -> str:
    """The consumer group a deployed job commits its offsets to (`streamrec-<job>`)."""
    return f"streamrec-{job}"


@dataclass(frozen=True, slots=True)
class LogMark:
    """A partition reader's recovery state: the next offset, and what identifies its log.

    `topic_id` is the broker's id of the topic (Kafka >= 2.8 and Tansu report one; None if the
    broker does not); `last` is (offset, crc32 of key and value) of the last record read, the
    fingerprint checked where no topic id is known.
    """

    offset: int
    topic_id: str | None = None
    last: tuple[int, int] | None = None


def fingerprint(key: bytes | None, value: bytes | None) -> int:
    """crc32 of a record's key and value (a record at a known offset identifies its log)."""
    return zlib.crc32(value or b"", zlib.crc32(key or b""))


def topic_id(bootstrap: Broker | dict, topic: str, timeout: float = 10.0) -> str | None:
    """The broker's id of `topic`, or None if it reports none.

    Args:
        bootstrap: the broker, or a client config naming it (and its security settings).

    Raises:
        LogMismatchError: the topic does not exist.
        StreamsKafkaError: the broker did not answer.
    """
    admin = AdminClient(client_config(bootstrap, **QUIET))
    where = _where(bootstrap)
    future = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic]
    try:
        described = future.result(timeout)
    except FutureTimeout as exc:
        raise StreamsKafkaError(f"describing {topic!r}: {where} did not answer") from exc
    except KafkaException as exc:
        err = exc.args[0]
        if err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise LogMismatchError(f"topic {topic!r} no longer exists on {where}") from exc
        if err.code() in (KafkaError._UNSUPPORTED_FEATURE, KafkaError.UNSUPPORTED_VERSION):
            return None
        raise StreamsKafkaError(f"describing {topic!r} on {where}: {err}") from exc
    tid = described.topic_id
    return None if tid is None or str(tid) == "AAAAAAAAAAAAAAAAAAAAAA" else str(tid)


def _record_before(config: dict, topic: str, partition: int, offset: int) -> tuple[int, int] | None:
    """(offset, fingerprint) of the record at `offset - 1`, or None if the partition ends before
    it (EOF, out of range, or nothing within `PROBE_TIMEOUT_S` from a broker that answers).

    Raises:
        StreamsKafkaError: the broker did not answer.
    """
    probe = Consumer({**config, "enable.partition.eof": True, "auto.offset.reset": OUT_OF_RANGE})
    try:
        probe.assign([TopicPartition(topic, partition, offset - 1)])
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while time.monotonic() < deadline:
            for m in probe.consume(1, 0.1):
                if m.error() is None and m.offset() == offset - 1:
                    return m.offset(), fingerprint(m.key(), m.value())
                return None  # EOF, out of range, or a record elsewhere: nothing at offset - 1
        try:  # nothing: beyond the end, if the broker is there to say so
            probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=PROBE_TIMEOUT_S)
        except KafkaException as exc:
            raise StreamsKafkaError(f"{topic}[{partition}]: {exc.args[0]}") from exc
        return None
    finally:
        probe.close()


def verify_mark(
    config: dict, topic: str, partition: int, mark: LogMark, hint: str = RESET_HINT
) -> str | None:
    """Check that `mark` (a resume state) belongs to the log `topic[partition]` has now.

    It must have the same topic id (where both are known), an offset within the partition
    (low watermark <= offset, and the record before it readable), and that record's fingerprint
    where one was kept.

    Returns:
        The topic id now (None if the broker reports none), to keep in later marks.

    Raises:
        LogMismatchError: one line naming topic, partition, offsets and `hint`.
    """
    where = f"{topic}[{partition}]"

    def mismatch(why: str) -> LogMismatchError:
        return LogMismatchError(
            f"{where}: the recovery offset {mark.offset:,} does not belong to the log the broker "
            f"has now ({why}); the topic was recreated or truncated (a broker restarted with "
            f"memory storage loses its topics) - nothing of it was read; start over with `{hint}`"
        )

    try:
        now = topic_id(config, topic)
    except LogMismatchError as exc:
        raise mismatch(str(exc)) from None
    if mark.topic_id is not None and now is not None and now != mark.topic_id:
        raise mismatch(f"topic id {now}, the store's offsets were read from {mark.topic_id}")
    if mark.offset <= 0:
        return now
    watcher = Consumer(config)
    try:
        low, high = watcher.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=PROBE_TIMEOUT_S
        )
    except KafkaException as exc:
        raise StreamsKafkaError(f"{where}: reading the watermarks: {exc.args[0]}") from exc
    finally:
        watcher.close()
    if mark.offset < low:
        raise mismatch(f"the partition starts at offset {low:,}")
    before = _record_before(config, topic, partition, mark.offset)
    if before is None:
        raise mismatch(f"offset {mark.offset - 1:,} is beyond the partition's end, {high:,}")
    if mark.last is not None and mark.last[0] == before[0] and mark.last[1] != before[1]:
        raise mismatch(f"the record at offset {before[0]:,} is not the one read there")
    return now


def _resume_mark(state: int | LogMark | None) -> LogMark | None:
    """The mark to check from a resume state (an int: a store written before marks existed)."""
    if state is None:
        return None
    return state if isinstance(state, LogMark) else LogMark(int(state))


class _BatchPartition(StatefulSourcePartition[RawBatch, LogMark]):
    """Reads one partition; emits one `RawBatch` per poll; its state is a `LogMark`.

    Resumed, it first checks the mark (`verify_mark`); later it checks again after the client
    reported a lost broker, on an out-of-range offset, and after `RECHECK_IDLE_S` with nothing
    read, so it never reads a recreated log from an old offset nor waits beyond its end.

    It reports its position, the log end offset and the lag (`streams.metrics`, at most once
    per `METER_EVERY_S`, from the watermarks the client caches from its fetches: no request).
    With `commit`, each snapshot (the end of an epoch) also commits the mark's offset to the
    consumer group of `config["group.id"]`, asynchronously, so standard lag tools see the job's
    progress; the job never reads those offsets back (its recovery store has them).
    """

    def __init__(
        self,
        config: dict,
        topic: str,
        partition: int,
        start: int,
        resume: LogMark | None,
        batch: int,
        tail: bool,
        hint: str,
        flow: str = "unnamed",
        commit: bool = False,
    ) -> None:
        self._config, self._hint = config, hint
        self._topic, self._partition = topic, partition
        self._batch, self._tail = batch, tail
        self._suspect = False
        self._flow, self._commit = flow, commit
        labels = (flow, topic, str(partition))
        self._position = metrics.POSITION.labels(*labels)
        self._log_end = metrics.LOG_END.labels(*labels)
        self._lag = metrics.LAG.labels(*labels)
        self._committed = metrics.COMMITTED.labels(*labels)
        self._commit_errors = metrics.COMMIT_ERRORS.labels(flow)
        self._meter_due = 0.0
        self._last_commit: int | None = None
        if resume is None:
            self._mark = LogMark(start, topic_id(config, topic))
        else:
            tid = verify_mark(config, topic, partition, resume, hint)
            self._mark = LogMark(resume.offset, tid or resume.topic_id, resume.last)
        self._consumer = Consumer(
            {**config, "error_cb": self._on_error, "on_commit": self._on_commit}
        )
        self._consumer.assign([TopicPartition(topic, partition, self._mark.offset)])
        self._eof = False
        self._idle_until: datetime | None = None
        self._quiet_since = time.monotonic()

    def _on_error(self, err: KafkaError) -> None:
        # A lost connection may mean a broker that comes back with other logs: check first.
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
            self._suspect = True

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        # Served by the client during consume() and close(); a failed commit is only counted:
        # the job's own offsets are in its recovery store, the group's are for lag tools.
        if err is not None or any(tp.error is not None for tp in partitions):
            self._commit_errors.inc()
            return
        for tp in partitions:
            if tp.partition == self._partition and tp.offset >= 0:
                self._committed.set(tp.offset)

    def _meter(self, now: bool = False) -> None:
        """Update the position, log end and lag gauges (at most once per `METER_EVERY_S`,
        unless `now`)."""
        at = time.monotonic()
        if at < self._meter_due and not now:
            return
        self._meter_due = at + METER_EVERY_S
        try:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, self._partition), cached=True
            )
        except KafkaException:
            return
        position = self._mark.offset if self._mark.offset >= 0 else low
        if position >= 0:
            self._position.set(position)
        if high >= 0 and position >= 0:
            self._log_end.set(high)
            self._lag.set(max(high - position, 0))  # Tansu's watermark can lag the last batch

    def _check(self) -> bool:
        """Verify the mark; False (and check again later) if the broker does not answer.

        Raises:
            LogMismatchError: the log changed.
        """
        mark = self._mark
        if mark.offset < 0:  # still at a logical start (OFFSET_BEGINNING): only the id counts
            mark = LogMark(0, mark.topic_id)
        self._quiet_since = time.monotonic()
        try:
            verify_mark(self._config, self._topic, self._partition, mark, self._hint)
        except LogMismatchError:
            raise
        except StreamsKafkaError:
            self._suspect = True  # the broker is away: read nothing until it answers the check
            self._idle_until = datetime.now(UTC) + RECHECK_BACKOFF
            return False
        self._suspect = False
        return True

    def next_batch(self) -> list[RawBatch]:
        batches = self._next_batch()
        self._meter()
        return batches

    def _next_batch(self) -> list[RawBatch]:
        if self._eof:
            raise StopIteration
        if self._suspect and not self._check():
            return []
        messages = self._consumer.consume(self._batch, 0.001)
        if self._suspect and not self._check():  # a loss reported during this poll
            self._rewind(messages)
            return []
        keys: list[bytes | None] = []
        values: list[bytes] = []
        offsets: list[int] = []
        for m in messages:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = not self._tail
                    self._quiet_since = time.monotonic()
                    self._meter_due = 0.0  # at the end: report it now
                    continue
                if err.code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
                    self._check()  # raises if the log changed; else the error below stops it
                raise StreamsKafkaError(f"reading {self._topic!r}[{self._partition}]: {err}")
            keys.append(m.key())
            values.append(m.value() or b"")
            offsets.append(m.offset())
        if not offsets:
            self._idle_until = datetime.now(UTC) + IDLE_BACKOFF
            if time.monotonic() - self._quiet_since > RECHECK_IDLE_S:
                self._check()
            return []
        self._idle_until = None
        self._quiet_since = time.monotonic()
        self._mark = LogMark(
            offsets[-1] + 1, self._mark.topic_id, (offsets[-1], fingerprint(keys[-1], values[-1]))
        )
        return [RawBatch(self._topic, self._partition, keys, values, offsets)]

    def _rewind(self, messages: list) -> None:
        """Forget `messages` (read but not emitted): the next poll reads from the mark again."""
        if any(m.error() is None for m in messages):
            self._consumer.seek(TopicPartition(self._topic, self._partition, self._mark.offset))

    def next_awake(self) -> datetime | None:
        return self._idle_until

    def snapshot(self) -> LogMark:
        mark = self._mark
        self._meter(now=True)
        metrics.snapshotted(self._flow, self._topic, self._partition)
        if self._commit and mark.offset >= 0 and mark.offset != self._last_commit:
            try:
                self._consumer.commit(
                    offsets=[TopicPartition(self._topic, self._partition, mark.offset)],
                    asynchronous=True,
                )
            except KafkaException:
                self._commit_errors.inc()
            else:
                self._last_commit = mark.offset
        return mark

    def close(self) -> None:
        self._consumer.close()


IDLE_BACKOFF = timedelta(milliseconds=5)
RECHECK_BACKOFF = timedelta(seconds=1)


class KafkaBatchSource(FixedPartitionedSource[RawBatch, LogMark]):
    """A Bytewax source over one topic that emits whole poll batches (`RawBatch`) as items.

    Bytewax's own `KafkaSource` emits every message as an item, and the per-item cost of the
    dataflow then dominates; one item per poll lets operators work on columns. Partitions are
    the unit of parallelism; the recovery state of a partition is a `LogMark`: its next offset
    and what identifies the log (checked on resume, `verify_mark`).

    Args:
        tail: keep waiting for new messages (True) or stop at the end of every partition as it
            was when reached (False, the bounded `--until-end` mode).
        batch: most messages per item.
        reset_hint: the command that starts the job over, named by a `LogMismatchError`.
        job: the deployed job reading (`stats`, ...): labels its metrics (`streams.metrics`),
            and each snapshot commits the partitions' offsets to its consumer group,
            `streamrec-<job>` (`group_id`). None: metrics labelled `unnamed`, nothing committed.
    """

    def __init__(
        self,
        bootstrap: Broker,
        topic: str,
        tail: bool = True,
        batch: int = 5_000,
        starting_offset: int = OFFSET_BEGINNING,
        reset_hint: str = RESET_HINT,
        job: str | None = None,
    ) -> None:
        self._bootstrap, self._topic, self._tail = bootstrap, topic, tail
        self._job = job
        self._batch, self._start = batch, starting_offset
        self.reset_hint = reset_hint
        """The command that starts the job over (also named by the steps after the source)."""

    def list_parts(self) -> list[str]:
        return [str(p) for p in partitions_of(self._bootstrap, self._topic)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | LogMark | None
    ) -> _BatchPartition:
        del step_id  # the partition name alone identifies the state
        config = {
            **client_config(self._bootstrap),
            "group.id": group_id(self._job) if self._job else "streamrec-bytewax",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": OUT_OF_RANGE,
            "fetch.wait.max.ms": 10,
            **QUIET,
        }
        return _BatchPartition(
            config,
            self._topic,
            int(for_part),
            self._start,
            _resume_mark(resume_state),
            self._batch,
            self._tail,
            self.reset_hint,
            flow=self._job or "unnamed",
            commit=self._job is not None,
        )
