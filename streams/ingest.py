"""The ingest step every flow starts with: decode -> event-time clock -> dead letters -> shard.

Per Kafka partition (a stateful step keyed by partition) the step:

1. decodes the raw batch (bad events -> DLQ with their reason);
2. refuses events ahead of the wall clock by more than `max_future_ms` (`future`);
3. keeps the partition's event-time clock, its high-water mark H, such that no single record
   can move it: an event more than `max_skip_ms` ahead of H (or any event before the partition
   has a clock) is *held*; the clock jumps only when `confirm_events` held events lie within
   `max_skip_ms` of each other (then they are admitted, in arrival order); a held event that
   `outlier_after` events on the old clock did not confirm is dead-lettered as `outlier` (so is
   one still held at the end of a bounded run whose partition has a clock; without one, the held
   events are admitted: nothing contradicts them). This is Flink's bounded out-of-orderness
   with the maximum taken over agreeing records instead of any one record;
4. drops events older than H minus the flow's allowed lateness (`late`);
5. drops events whose `event_id` it has admitted before, within the lateness (`duplicate`;
   flows that ask for it, at most `dedupe_ids` ids per partition);
6. hands the rest, as columns, to the flow's `shard` function, which splits them into keyed
   parts; a record that makes `shard` raise goes to the DLQ as `internal` and the flow goes on.

Every dead letter carries the bytes produced, the topic, partition and offset. The clock, the
held events and the remembered ids are the step's state, snapshotted with the flow's recovery.
The step counts, once per batch, the messages in, the events it admits, the dead letters by
reason and the late events, and reports the partition's clock (`streams.metrics`).
"""

from __future__ import annotations

import copy
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import bytewax.operators as op
import msgspec
import numpy as np
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.operators import StatefulLogic
from bytewax.outputs import DynamicSink

from features.windows import TYPE_METRIC
from streams import metrics
from streams.config import EventLimits
from streams.decode import Decoded, decode_batch
from streams.errors import EventError, RecoveryStateError
from streams.events import Event, dead_letter, decode_dead_letter, encode_dead_letter
from streams.kafka_io import RESET_HINT, RawBatch
from streams.runtime import tune_gc

P = TypeVar("P")


@dataclass(frozen=True, slots=True)
class Columns:
    """The valid events of one batch as columns."""

    partition: int
    ts: np.ndarray
    kind: np.ndarray
    watch: np.ndarray
    duration: np.ndarray
    users: list[str]
    notes: list[str]
    events: list[Event]
    raw: list[bytes] = field(default_factory=list)
    """The Kafka value of each event (empty when the columns were built from events alone)."""
    keys: list[bytes | None] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)

    def take(self, keep: list[int]) -> Columns:
        """The rows `keep`, in that order."""
        return Columns(
            self.partition,
            self.ts[keep],
            self.kind[keep],
            self.watch[keep],
            self.duration[keep],
            [self.users[i] for i in keep],
            [self.notes[i] for i in keep],
            [self.events[i] for i in keep],
            [self.raw[i] for i in keep] if self.raw else [],
            [self.keys[i] for i in keep] if self.keys else [],
            [self.offsets[i] for i in keep] if self.offsets else [],
        )

    def record(self, i: int) -> Record:
        """Row `i` as a record."""
        return Record(self.events[i], self.raw[i], self.keys[i], self.offsets[i])


def to_columns(decoded: Decoded) -> Columns:
    """Turn a decoded batch into columns."""
    return columns_of(decoded.partition, decoded.events, decoded.raw, decoded.keys, decoded.offsets)


def columns_of(
    partition: int,
    events: list[Event],
    raw: list[bytes] | None = None,
    keys: list[bytes | None] | None = None,
    offsets: list[int] | None = None,
) -> Columns:
    """Columns of `events` (with their Kafka values, keys and offsets where known)."""
    n = len(events)
    ts = np.fromiter((e.ts for e in events), dtype=np.int64, count=n)
    kind = np.fromiter((TYPE_METRIC[e.type] for e in events), dtype=np.int64, count=n)
    watch = np.fromiter((e.watch_ms or 0 for e in events), dtype=np.int64, count=n)
    duration = np.fromiter((e.duration_ms or 0 for e in events), dtype=np.int64, count=n)
    return Columns(
        partition,
        ts,
        kind,
        watch,
        duration,
        [e.user_id for e in events],
        [e.note_id for e in events],
        events,
        raw or [],
        keys or [],
        offsets or [],
    )


def shard_of(key: str, shards: int) -> int:
    """Stable shard of an entity id (crc32, the same in every process)."""
    return zlib.crc32(key.encode()) % shards


class ShardCache(dict):
    """id -> shard, computed once per id; forgets everything past `limit` ids (stays bounded)."""

    def __init__(self, shards: int, limit: int = 1 << 20) -> None:
        super().__init__()
        self.shards, self.limit = shards, limit

    def __missing__(self, key: str) -> int:
        if len(self) >= self.limit:
            self.clear()
        shard = self[key] = shard_of(key, self.shards)
        return shard


_CACHES: dict[int, ShardCache] = {}


def shard_cache(shards: int) -> ShardCache:
    """The process's shared id -> shard cache for `shards` shards."""
    cache = _CACHES.get(shards)
    if cache is None:
        cache = _CACHES[shards] = ShardCache(shards)
    return cache


@dataclass(frozen=True, slots=True)
class Record:
    """One decoded event with the Kafka value, key and offset it came from."""

    event: Event
    raw: bytes
    key: bytes | None
    offset: int


@dataclass
class PartitionClock:
    """Recoverable state of one partition's ingest: its clock, held events, admitted ids."""

    hwm: int | None = None
    """Event-time high-water mark of the admitted events (epoch ms); None before the first."""
    held: list[Record] = field(default_factory=list)
    """Events that would move the clock by more than `max_skip_ms`, in arrival order."""
    since_held: int = 0
    """Events admitted on the current clock since the oldest held event arrived."""
    ids: dict[str, int] = field(default_factory=dict)
    """Admitted event ids -> event time (flows that drop duplicates)."""
    order: deque[str] = field(default_factory=deque)
    """The ids in `ids`, oldest admission first."""
    next_offset: int | None = None
    """The offset after the last record this state has taken (its input resumes there)."""


@dataclass(frozen=True, slots=True)
class Ingested(Generic[P]):
    """What the ingest step emits for one raw batch."""

    parts: list[tuple[str, P]]
    dead: list[KafkaSinkMessage]


Shard = Callable[[Columns, int | None], list[tuple[str, P]]]
"""A flow's split of a batch's accepted events (and the partition's high-water mark) into
keyed parts."""

_FIELD = {"late": "ts", "future": "ts", "outlier": "ts", "duplicate": "event_id"}


class IngestLogic(StatefulLogic[RawBatch, Ingested, PartitionClock]):
    """The ingest step of one partition (module docstring)."""

    def __init__(
        self,
        state: PartitionClock,
        flow: str,
        limits: EventLimits,
        lateness_ms: int | None,
        shard: Shard,
        dedupe: bool,
        recoverable: bool,
        reset_hint: str = RESET_HINT,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self.state, self.flow, self.limits = state, flow, limits
        self.reset_hint = reset_hint
        self.lateness, self.shard = lateness_ms, shard
        self.dedupe = dedupe and limits.dedupe_ids > 0
        self.recoverable = recoverable
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._where: tuple[str, int] = ("", 0)
        self._reasons: dict[str, int] = {}
        """Dead letters made by this step since the last batch was counted, by reason."""
        self._meters: tuple | None = None
        """This partition's series (in, out, late, watermark), made at its first batch."""

    # -- dead letters ---------------------------------------------------------------------
    def _letter(self, rec: Record, reason: str, detail: str) -> KafkaSinkMessage:
        self._reasons[reason] = self._reasons.get(reason, 0) + 1
        err = EventError(reason, _FIELD.get(reason), detail)
        topic, partition = self._where
        letter = dead_letter(rec.raw, err, self.flow, topic, partition, rec.offset)
        return KafkaSinkMessage(rec.key, encode_dead_letter(letter))

    # -- the clock --------------------------------------------------------------------------
    def _admit(self, rec: Record, out: list[Record], dead: list[KafkaSinkMessage]) -> None:
        st, t = self.state, rec.event.ts
        if self.lateness is not None and st.hwm is not None and t < st.hwm - self.lateness:
            dead.append(
                self._letter(
                    rec,
                    "late",
                    f"ts {t} is older than the partition's high-water mark {st.hwm} minus the "
                    f"allowed lateness {self.lateness} ms",
                )
            )
            return
        out.append(rec)
        st.hwm = t if st.hwm is None else max(st.hwm, t)

    def _release_reachable(self, out: list[Record], dead: list[KafkaSinkMessage]) -> None:
        st, skip = self.state, self.limits.max_skip_ms
        reach = [h for h in st.held if h.event.ts <= st.hwm + skip]
        if reach:
            st.held = [h for h in st.held if h.event.ts > st.hwm + skip]
            for h in reach:
                self._admit(h, out, dead)

    def _step(self, rec: Record, out: list[Record], dead: list[KafkaSinkMessage]) -> None:
        st, lim, t = self.state, self.limits, rec.event.ts
        if st.hwm is not None and t <= st.hwm + lim.max_skip_ms:
            self._admit(rec, out, dead)
            if st.held:
                st.since_held += 1
                self._release_reachable(out, dead)
                if st.held and st.since_held >= lim.outlier_after:
                    self._outliers(dead, f"{st.since_held} later events kept the clock")
            return
        st.held.append(rec)
        if len(st.held) == 1:
            st.since_held = 0
        cluster = [h for h in st.held if abs(h.event.ts - t) <= lim.max_skip_ms]
        if len(cluster) >= lim.confirm_events:
            chosen = {id(h) for h in cluster}
            st.held = [h for h in st.held if id(h) not in chosen]
            for h in cluster:
                self._admit(h, out, dead)
            self._release_reachable(out, dead)
            st.since_held = 0

    def _outliers(self, dead: list[KafkaSinkMessage], why: str) -> None:
        st = self.state
        for h in st.held:
            dead.append(
                self._letter(
                    h,
                    "outlier",
                    f"ts {h.event.ts} is more than {self.limits.max_skip_ms} ms ahead of the "
                    f"partition's high-water mark {st.hwm} and no other event confirmed it "
                    f"({why})",
                )
            )
        st.held, st.since_held = [], 0

    def _clock(self, cols: Columns, dead: list[KafkaSinkMessage]) -> Columns:
        """The events the clock admits, in processing order."""
        st, lim = self.state, self.limits
        n = len(cols.ts)
        if n and not st.held and st.hwm is not None:
            # Fast path: no event skips ahead, so only the lateness bound applies (vectorised).
            running = np.maximum.accumulate(cols.ts)
            before = np.maximum(np.r_[st.hwm, running[:-1]], st.hwm)
            if bool((cols.ts <= before + lim.max_skip_ms).all()):
                if self.lateness is None:
                    st.hwm = int(max(st.hwm, running[-1]))
                    return cols
                late = cols.ts < before - self.lateness
                st.hwm = int(max(st.hwm, running[-1]))
                if not late.any():
                    return cols
                for i in np.flatnonzero(late).tolist():
                    dead.append(
                        self._letter(
                            cols.record(i),
                            "late",
                            f"ts {cols.ts[i]} is older than the partition's high-water mark "
                            f"{before[i]} minus the allowed lateness {self.lateness} ms",
                        )
                    )
                return cols.take(np.flatnonzero(~late).tolist())
        out: list[Record] = []
        for i in range(n):
            self._step(cols.record(i), out, dead)
        return self._columns(cols.partition, out)

    @staticmethod
    def _columns(partition: int, records: list[Record]) -> Columns:
        return columns_of(
            partition,
            [r.event for r in records],
            [r.raw for r in records],
            [r.key for r in records],
            [r.offset for r in records],
        )

    # -- duplicates -------------------------------------------------------------------------
    def _dedupe(self, cols: Columns, dead: list[KafkaSinkMessage]) -> Columns:
        st, keep = self.state, []
        ids, order = st.ids, st.order
        for i, e in enumerate(cols.events):
            if e.event_id in ids:
                dead.append(
                    self._letter(
                        cols.record(i),
                        "duplicate",
                        f"event_id {e.event_id!r} was already counted (first at ts "
                        f"{ids[e.event_id]})",
                    )
                )
                continue
            ids[e.event_id] = e.ts
            order.append(e.event_id)
            keep.append(i)
        horizon = st.hwm - (self.lateness or 0) if st.hwm is not None else None
        while order and (
            len(order) > self.limits.dedupe_ids or (horizon is not None and ids[order[0]] < horizon)
        ):
            del ids[order.popleft()]
        return cols if len(keep) == len(cols.events) else cols.take(keep)

    # -- sharding ---------------------------------------------------------------------------
    def _shard(self, cols: Columns, dead: list[KafkaSinkMessage]) -> list:
        try:
            return self.shard(cols, self.state.hwm)
        except Exception:  # find the records that make it raise; the rest go on
            good = []
            for i in range(len(cols.events)):
                try:
                    self.shard(cols.take([i]), self.state.hwm)
                except Exception as exc:
                    detail = f"{type(exc).__name__}: {exc}"
                    dead.append(self._letter(cols.record(i), "internal", detail))
                else:
                    good.append(i)
            return self.shard(cols.take(good), self.state.hwm)

    # -- the logic --------------------------------------------------------------------------
    def _check_resume(self, value: RawBatch) -> None:
        """Refuse records this state has taken before (its recovery snapshot is ahead of its
        input's): counting on would drop them as late or duplicate, silently."""
        taken = self.state.next_offset
        if not value.offsets or taken is None or value.offsets[0] >= taken:
            return
        where = f"{value.topic}[{value.partition}]"
        raise RecoveryStateError(
            f"{self.flow}: the recovered state of {where} has taken records up to offset "
            f"{taken - 1:,} but its input resumed at offset {value.offsets[0]:,}: the recovery "
            "store holds snapshots of different epochs; nothing of these records was counted - "
            f"start over with `{self.reset_hint}`"
        )

    # -- metrics ----------------------------------------------------------------------------
    def _count(self, received: int, decoder_dead: list[KafkaSinkMessage], admitted: int) -> None:
        """Account one batch (or the end of the input) in `streams.metrics`."""
        if self._meters is None:
            labels = (self.flow, str(self._where[1]))
            self._meters = (
                metrics.EVENTS_IN.labels(*labels),
                metrics.EVENTS_OUT.labels(*labels),
                metrics.LATE.labels(*labels),
                metrics.WATERMARK.labels(*labels),
            )
        events_in, events_out, late, watermark = self._meters
        if received:
            events_in.inc(received)
        if admitted:
            events_out.inc(admitted)
        reasons = self._reasons
        for letter in decoder_dead:  # rare: decode the reason the decoder wrote
            try:
                reason = decode_dead_letter(letter.value).reason
            except msgspec.DecodeError:  # a count, never a failure
                reason = "unknown"
            reasons[reason] = reasons.get(reason, 0) + 1
        if reasons:
            for reason, n in reasons.items():
                metrics.DEAD_LETTERS.labels(self.flow, reason).inc(n)
            if "late" in reasons:
                late.inc(reasons["late"])
            reasons.clear()
        if self.state.hwm is not None:
            watermark.set(self.state.hwm / 1000)

    def on_item(self, value: RawBatch) -> tuple[list[Ingested], bool]:
        self._check_resume(value)
        self._where = (value.topic, value.partition)
        if value.offsets:
            self.state.next_offset = value.offsets[-1] + 1
        decoded = decode_batch(value, self.flow, self.limits.max_bytes)
        dead = list(decoded.dead)
        cols = to_columns(decoded)
        if len(cols.ts):
            ahead = cols.ts > self.now_ms() + self.limits.max_future_ms
            if ahead.any():
                for i in np.flatnonzero(ahead).tolist():
                    detail = (
                        f"ts {cols.ts[i]} is more than {self.limits.max_future_ms} ms ahead of "
                        "the wall clock"
                    )
                    dead.append(self._letter(cols.record(i), "future", detail))
                cols = cols.take(np.flatnonzero(~ahead).tolist())
        cols = self._clock(cols, dead)
        if self.dedupe and len(cols.events):
            cols = self._dedupe(cols, dead)
        parts = self._shard(cols, dead)
        admitted = len(cols.events) - self._reasons.get("internal", 0)
        self._count(len(value.values), decoded.dead, admitted)
        return [Ingested(parts, dead)], StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[Ingested], bool]:
        st = self.state
        if not st.held:
            return [], StatefulLogic.RETAIN
        dead: list[KafkaSinkMessage] = []
        out: list[Record] = []
        if st.hwm is None:  # nothing contradicts them
            held, st.held = st.held, []
            for h in held:
                self._admit(h, out, dead)
        else:
            self._outliers(dead, "the input ended")
        cols = self._columns(self._where[1], out)
        if self.dedupe and len(cols.events):
            cols = self._dedupe(cols, dead)
        parts = self._shard(cols, dead) if out else []
        self._count(0, [], len(cols.events) - self._reasons.get("internal", 0) if out else 0)
        return [Ingested(parts, dead)], StatefulLogic.RETAIN

    def snapshot(self) -> PartitionClock | None:
        # Bytewax asks for snapshots every epoch even without recovery; copying is then waste.
        return copy.deepcopy(self.state) if self.recoverable else None


def ingest_flow(
    name: str,
    source: Source[RawBatch],
    dlq: DynamicSink,
    *,
    limits: EventLimits,
    lateness_ms: int | None,
    shard: Shard,
    dedupe: bool = False,
    recoverable: bool = True,
) -> tuple[Dataflow, Stream[tuple[str, P]]]:
    """A new dataflow that starts with the ingest step: raw batches -> the flow's keyed parts.

    Args:
        name: the flow's name (its Bytewax flow id, and recorded in its dead letters).
        source: raw Kafka batches (`KafkaBatchSource` or a `TestingSource` of `RawBatch`).
        dlq: receives dead letters (undecodable, future, outlier, late, duplicate, internal).
        limits: decoding limits and the event-time clock's bounds.
        lateness_ms: allowed lateness against the partition's high-water mark; None keeps all.
        shard: splits a batch's accepted events into `(key, part)` items.
        dedupe: drop events whose id was admitted before (within the lateness).
        recoverable: snapshot the state each epoch (off only when running without recovery).

    Returns:
        (the dataflow, the stream of `(key, part)` items the flow goes on from).
    """
    flow = Dataflow(name)
    hint = getattr(source, "reset_hint", RESET_HINT)  # a Kafka source knows its job's command
    keyed = op.key_on("by_partition", op.input("in", flow, source), lambda b: str(b.partition))

    def logic(resume: PartitionClock | None) -> IngestLogic:
        tune_gc()  # the flow is starting: everything it imports is loaded
        clock = resume or PartitionClock()
        return IngestLogic(clock, name, limits, lateness_ms, shard, dedupe, recoverable, hint)

    ingested = op.key_rm("ingested", op.stateful("ingest", keyed, logic))
    op.output("dlq", op.flat_map("dead", ingested, lambda i: i.dead), dlq)
    return flow, op.flat_map("parts", ingested, lambda i: i.parts)
