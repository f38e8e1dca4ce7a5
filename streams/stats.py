"""The stats job: multi-window statistics of every user and note, kept fresh in Feast (Redis).

Dataflow: Kafka batches -> per Kafka partition: decode (bad -> DLQ), columns, late filter
(late -> DLQ, reason `late`) -> split into user shards and note shards (stable hash of the id)
-> per-shard tile rings -> every `flush_interval_ms` of wall time, the changed entities' window
counts (`StatsFlush`) -> the online sink. Every shard receives every batch's event-time maximum,
even when none of the batch's entities belong to it, so all shards share one clock; as that clock
moves, entities whose windows lose a tile are rewritten too ("idle-key refresh"), so a value read
at any time is right as of the flow's event-time high-water mark.

Each shard also keeps the point-in-time offline log (`LogRows`, docs/stats.md): a second tile
store that lags at the shard's watermark W (the least high-water mark of the input partitions
minus the allowed lateness, so no event older than W can still come) and replays the events
older than W in event-time order, emitting one row per entity and change time - its own event
times and the tile boundaries where one of its tiles leaves a window.
"""

from __future__ import annotations

import bisect
import copy
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulLogic
from bytewax.outputs import DynamicSink, Sink

from features.windows import METRICS
from streams.config import DEFAULT_LIMITS, EventLimits, StatsConfig
from streams.ingest import Columns, ingest_flow, shard_cache
from streams.kafka_io import KafkaBatchSource, RawBatch
from streams.pacing import PACER
from streams.tiles import TileStore, event_metrics

VIEWS = {"u": "user_stats", "n": "note_stats"}


logger = logging.getLogger(__name__)
GENERATION_CHECK_S = 1.0
"""How often a shard asks whether the online store lost its data (the token `SharedGeneration`
reads in its own thread)."""
LOG_IDLE_PARTITION_MS = 30_000
"""A partition not heard from for this long (wall time) stops holding the offline log back."""


@dataclass(frozen=True, slots=True)
class ShardBatch:
    """The part of a batch one shard owns, plus the batch's event-time maximum and the
    high-water mark of the Kafka partition it came from."""

    view: str
    max_ts: int
    ids: list[str]
    ts: np.ndarray
    metrics: np.ndarray
    partition: int = 0
    partition_hwm: int = 0


@dataclass(frozen=True, slots=True)
class LogRows:
    """Offline-log rows: entity `ids[i]`'s window counts from event time `ts[i]` (ms) on, until
    its next row; `created_ms` orders rows of one entity and time (a later one wins)."""

    ids: list[str]
    ts: np.ndarray
    counts: dict[str, np.ndarray]
    created_ms: int


@dataclass(frozen=True, slots=True)
class StatsFlush:
    """Window counts of changed entities of one view, valid as of event time `as_of_ms`, and
    the offline-log rows that became final since the shard's last flush."""

    view: str
    ids: list[str]
    counts: dict[str, np.ndarray]
    as_of_ms: int
    log: LogRows | None = None


def shard_keys(shards: int) -> list[str]:
    """Every key `shard_batches` gives a part, sorted: the stats sinks' partitions."""
    return sorted(f"{prefix}{s}" for prefix in "un" for s in range(shards))


def shard_batches(
    cols: Columns, shards: int, hwm: int | None = None
) -> list[tuple[str, ShardBatch]]:
    """Split a batch into one (shard key, part) per user shard and per note shard.

    `hwm` is the partition's high-water mark after the batch (default: the batch's maximum).
    """
    if len(cols.ts) == 0:
        return []
    metrics = event_metrics(cols.kind, cols.watch, cols.duration)
    max_ts = int(cols.ts.max())
    mark = max_ts if hwm is None else max(int(hwm), max_ts)
    out = []
    for prefix, ids in (("u", cols.users), ("n", cols.notes)):
        cache = shard_cache(shards)
        shard = np.array([cache[k] for k in ids], dtype=np.int64)
        order = np.argsort(shard, kind="stable")
        bounds = np.searchsorted(shard[order], np.arange(shards + 1))
        for s in range(shards):
            sel = order[bounds[s] : bounds[s + 1]]
            part = ShardBatch(
                VIEWS[prefix],
                max_ts,
                [ids[i] for i in sel],
                cols.ts[sel],
                metrics[sel],
                cols.partition,
                mark,
            )
            out.append((f"{prefix}{s}", part))
    return out


@dataclass
class ShardState:
    """Recoverable state of one shard."""

    store: TileStore
    view: str = ""
    dirty: set[int] | None = None
    log: TileStore | None = None
    """The offline log's tiles, as of the log clock `log.clock` (<= the watermark)."""
    marks: dict[int, int] = field(default_factory=dict)
    """Input partition -> its high-water mark."""
    pending: list[tuple[list[str], np.ndarray, np.ndarray]] = field(default_factory=list)
    """Events not yet in the log: (entity ids, event times, metrics) chunks."""
    created_ms: int = 0
    log_late: int = 0
    """Events that reached the shard after the log clock had passed them (logged late)."""
    generation: str | None = None
    """The online store's generation token when this shard last wrote (`StoreGeneration`)."""


class SharedGeneration:
    """The online store's generation token for all the shards of a process, read again every
    `max_age_s` by a thread of its own, so no shard waits for Redis (each shard asked for it
    every second: two Redis round trips per shard, waiting behind the pipelined writes; then
    one read per process, still in the worker thread).

    The first call reads the token itself (and raises what the read raised; the next call
    reads again); after it, a call returns the token the thread read last, or raises, once,
    what its last read raised.
    """

    def __init__(self, read: Callable[[], str], max_age_s: float) -> None:
        self._read, self._max_age_s = read, max_age_s
        self._token: str | None = None
        self._error: Exception | None = None
        self._thread: threading.Thread | None = None

    def __call__(self) -> str:
        if self._token is None:
            self._token = self._read()
            self._thread = threading.Thread(target=self._loop, name="generation", daemon=True)
            self._thread.start()
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self._token

    def refresh(self) -> None:
        """Read the token now (what the thread does every `max_age_s`)."""
        try:
            self._token = self._read()
        except Exception as exc:  # handed to the next call
            self._error = exc

    def _loop(self) -> None:
        while True:
            time.sleep(self._max_age_s)
            self.refresh()


class ShardLogic(StatefulLogic[ShardBatch, StatsFlush, ShardState]):
    """Keeps one shard's tiles; emits the changed entities every flush interval, and the
    offline-log rows the watermark made final."""

    def __init__(
        self,
        state: ShardState,
        flush_interval_ms: int,
        recoverable: bool,
        lateness_ms: int = 0,
        partitions: Sequence[int] | None = None,
        idle_partition_ms: int = LOG_IDLE_PARTITION_MS,
        generation: Callable[[], str] | None = None,
    ) -> None:
        self.state = state
        self.generation = generation
        self.checked_at = -math.inf
        self.recoverable = recoverable
        if state.dirty is None:
            state.dirty = set()
        if state.log is None:
            state.log = TileStore(state.store.windows)
        if state.pending and isinstance(state.pending[0][0], np.ndarray):
            # A snapshot from before the log released entities held log rows, not ids.
            ids = state.log.ids
            state.pending = [
                ([ids[r] for r in rows.tolist()], ts, m) for rows, ts, m in state.pending
            ]
        state.pending.sort(key=lambda chunk: int(chunk[1].min()))  # older snapshots: arrival
        self.mins = [int(ts.min()) for _, ts, _ in state.pending]
        """Least event time of each chunk of `state.pending`, which is kept in this order."""
        self.interval_s = flush_interval_ms / 1000
        self.next_flush: datetime | None = None
        self.lateness = lateness_ms
        self.partitions = None if partitions is None else tuple(partitions)
        self.idle_s = idle_partition_ms / 1000
        start = time.monotonic()
        self.heard = dict.fromkeys(self.partitions or (), start)

    def on_item(self, value: ShardBatch) -> tuple[list[StatsFlush], bool]:
        st = self.state
        st.view = value.view
        p = value.partition
        st.marks[p] = max(value.partition_hwm, st.marks.get(p, value.partition_hwm))
        self.heard[p] = time.monotonic()
        st.dirty.update(st.store.advance(value.max_ts).tolist())
        if value.ids:
            rows = st.store.rows_for(value.ids)
            st.store.add(rows, value.ts, value.metrics)
            st.dirty.update(rows.tolist())
            self._keep(value.ids, value.ts, value.metrics)
        now = datetime.now(UTC)
        if self.next_flush is None:
            self.next_flush = now + timedelta(seconds=self.interval_s)
        if now >= self.next_flush:
            return self._flush(), StatefulLogic.RETAIN
        return [], StatefulLogic.RETAIN

    def _watermark(self) -> int | None:
        """Least high-water mark of the active partitions minus the lateness (None: unknown)."""
        marks = self.state.marks
        if self.partitions is None:
            active = list(marks)
        else:
            now = time.monotonic()
            active = [p for p in self.partitions if now - self.heard[p] <= self.idle_s]
            if any(p not in marks for p in active):
                return None
        values = [marks[p] for p in active if p in marks] or list(marks.values())
        return min(values) - self.lateness if values else None

    def _keep(self, ids: list[str], ts: np.ndarray, metrics: np.ndarray) -> None:
        """Add a chunk of events to the pending ones (not yet in the log), in the order of
        their least event times (chunks mostly arrive in it: the insertion is near the end)."""
        least = int(ts.min())
        at = bisect.bisect_right(self.mins, least)
        self.mins.insert(at, least)
        self.state.pending.insert(at, (ids, ts, metrics))

    def _take_pending(self, bound: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Remove and return (ids, event times, metrics) of the pending chunks holding an event
        at or before `bound` (None: all); the other chunks stay pending, untouched.

        A flush thus costs what becomes final, not every event within the lateness (at 10k
        events/s, 10 min of them: re-reading them all at every flush was the job's bottleneck),
        nor a look at every pending chunk (as many as the batches of 10 min): the chunks are
        ordered by least event time, so those taken are a prefix, found by bisection.
        """
        st = self.state
        cut = len(st.pending) if bound is None else bisect.bisect_right(self.mins, bound)
        taken = st.pending[:cut]
        del st.pending[:cut], self.mins[:cut]
        if not taken:
            empty = np.empty(0, np.int64)
            return np.empty(0, dtype=object), empty, np.empty((0, len(METRICS)), np.int64)
        keys = np.array([k for chunk in taken for k in chunk[0]], dtype=object)
        ts, metrics = (np.concatenate(x) for x in list(zip(*taken, strict=True))[1:])
        return keys, ts, metrics

    def _log_rows(self, final: bool) -> LogRows | None:
        """Replay the pending events older than the watermark into the log tiles."""
        st, log = self.state, self.state.log
        w = None if final else self._watermark()
        target = st.store.clock if final else (None if w is None else w - 1)
        if target is None:
            return None
        clock = log.clock
        # Events after `bound` are neither late (<= clock) nor ready (<= target, which a late
        # event raises to clock + 1 below): they are left pending as they are.
        bound = None if final else (target if clock is None else max(target, clock + 1))
        keys, ts, metrics = self._take_pending(bound)
        if len(ts):
            rows = log.rows_for(keys.tolist())
        elif clock is None or target <= clock:
            return None
        else:  # no event, but time passed: tiles may leave windows
            rows = np.empty(0, np.int64)
        parts = []
        late = ts <= clock if clock is not None else np.zeros(len(ts), dtype=bool)
        if late.any():
            # Events the log clock has passed (their partition idle or unknown until then):
            # logged from the next millisecond on - the one case the log is not exact.
            st.log_late += int(late.sum())
            log.add(rows[late], ts[late], metrics[late])
            hit = np.unique(rows[late])
            parts.append((hit, np.full(len(hit), clock + 1, np.int64), log.window_counts(hit)))
            rows, ts, metrics, keys = rows[~late], ts[~late], metrics[~late], keys[~late]
            target = max(target, clock + 1)
        if clock is not None and target <= clock:
            if len(ts):
                self._keep(keys.tolist(), ts, metrics)
            return None
        ready = ts <= target
        if not ready.all():
            self._keep(keys[~ready].tolist(), ts[~ready], metrics[~ready])
        if ready.any() or clock is not None:
            parts.append(log.history(rows[ready], ts[ready], metrics[ready], target))
        if not parts:
            return None
        r = np.concatenate([x[0] for x in parts])
        t = np.concatenate([x[1] for x in parts])
        counts = {k: np.concatenate([x[2][k] for x in parts]) for k in parts[-1][2]}
        if len(parts) > 1:  # a late row and a replayed one at clock + 1: keep the replayed
            order = np.lexsort((np.arange(len(r)), r, t))
            ro, to = r[order], t[order]
            keep = order[np.r_[(ro[1:] != ro[:-1]) | (to[1:] != to[:-1]), True]]
            r, t, counts = r[keep], t[keep], {k: v[keep] for k, v in counts.items()}
        if not len(r):
            return None
        st.created_ms = max(int(time.time() * 1000), st.created_ms + 1)
        rows = LogRows([log.ids[i] for i in r.tolist()], t, counts, st.created_ms)
        log.release(r)  # entities whose last row is all zeros: nothing of them is kept
        return rows

    def _flush(self, final: bool = False) -> list[StatsFlush]:
        st = self.state
        wait = PACER.interval_s(self.interval_s)
        self.next_flush = datetime.now(UTC) + timedelta(seconds=wait)
        if st.store.clock is None:
            return []
        self._check_store()
        log = self._log_rows(final)
        if not st.dirty and log is None:
            return []
        rows = np.fromiter(sorted(st.dirty), dtype=np.int64, count=len(st.dirty))
        st.dirty.clear()
        counts = st.store.window_counts(rows)
        ids = [st.store.ids[r] for r in rows.tolist()]
        st.store.release(rows)  # written as all zeros now: drop them (docs/stats.md, "State")
        return [StatsFlush(st.view, ids, counts, st.store.clock, log)]

    def _check_store(self) -> None:
        """Rewrite every entity of the shard if the online store lost its data (checked at most
        once per `GENERATION_CHECK_S`): its generation token changed since this shard wrote."""
        now = time.monotonic()
        if self.generation is None or now - self.checked_at < GENERATION_CHECK_S:
            return
        self.checked_at = now
        st = self.state
        try:
            token = self.generation()
        except Exception as exc:  # the sink retries the store; the check waits for the next
            logger.warning("cannot read the online store's generation (%s)", exc)
            return
        if st.generation is not None and token != st.generation:
            logger.warning(
                "the online store lost its data (generation %s -> %s): rewriting the %d "
                "entities of shard %s",
                st.generation,
                token,
                len(st.store),
                st.view,
            )
            st.dirty.update(st.store.live_rows().tolist())
        st.generation = token

    def on_notify(self) -> tuple[list[StatsFlush], bool]:
        return self._flush(), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[StatsFlush], bool]:
        return self._flush(final=True), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.state.dirty or self.state.pending:
            return self.next_flush
        if self.generation is not None and self.state.store.clock is not None:
            # Idle, but still watching the store: wake for the next generation check.
            due = self.checked_at + GENERATION_CHECK_S - time.monotonic()
            return datetime.now(UTC) + timedelta(seconds=max(due, 0.0))
        return None

    def snapshot(self) -> ShardState | None:
        # Bytewax asks for snapshots every epoch even without recovery; copying is then waste.
        return copy.deepcopy(self.state) if self.recoverable else None


def build_flow(
    source: Source[RawBatch],
    sink: Sink[tuple[str, StatsFlush]],
    dlq: DynamicSink,
    config: StatsConfig,
    recoverable: bool = True,
    limits: EventLimits = DEFAULT_LIMITS,
    partitions: Sequence[int] | None = None,
    generation: Callable[[], str] | None = None,
) -> Dataflow:
    """Build the stats dataflow.

    Args:
        source: raw Kafka batches (`KafkaBatchSource` or a `TestingSource` of `RawBatch`).
        sink: receives `(shard key, StatsFlush)` items (`FeastOnlineSink` in production).
        dlq: receives dead letters (undecodable and late events).
        config: job settings.
        recoverable: snapshot the state each epoch (turn off only when running without
            a recovery store).
        limits: event decoding limits.
        partitions: the input topic's partition ids, all of which hold the offline log's
            watermark (default: the Kafka source's partitions; for other sources, the
            partitions seen so far).
        generation: the online store's generation token (`features.client.StoreGeneration`);
            when it changes, every shard rewrites all its entities (the store lost its data).
            None: no check.
    """
    if generation is not None:
        # One read per half check interval serves every shard: a lost store is still seen
        # within 1.5 check intervals.
        generation = SharedGeneration(generation, GENERATION_CHECK_S / 2)
    if partitions is None and isinstance(source, KafkaBatchSource):
        partitions = [int(p) for p in source.list_parts()]
    flow, parts = ingest_flow(
        "stats",
        source,
        dlq,
        limits=limits,
        lateness_ms=config.allowed_lateness_ms,
        shard=lambda cols, hwm: shard_batches(cols, config.shards, hwm),
        dedupe=True,
        recoverable=recoverable,
    )
    flushed = op.stateful(
        "tiles",
        parts,
        lambda resume: ShardLogic(
            resume or ShardState(TileStore()),
            config.flush_interval_ms,
            recoverable,
            config.allowed_lateness_ms,
            partitions,
            generation=generation,
        ),
    )
    op.output("online", flushed, sink)
    return flow
