"""The sample joiner: each impression joined with the actions that followed it -> training samples.

Dataflow (layout and reasons in docs/samples.md):

    Kafka batches -> per Kafka partition: decode (bad -> DLQ), late filter (-> DLQ `late`),
    split by user shard and by note shard (every shard gets every batch's partition high-water
    mark, so all shards share one watermark)
    -> note shards: point-in-time note statistics of each impression -> sent to the user shard
    -> user shards: point-in-time user statistics, the attribution join, window close,
       negative down-sampling, micro-batches -> `training-samples` + the parquet log;
       each user's click history (`Sample.history`) -> the online store (`HistoryUpdate`,
       `HistorySink`: Feast view `user_history`, read by serving).

Event time drives everything. The watermark W of a shard is the least high-water mark of the
input partitions minus `allowed_lateness_ms`; an accepted event is never older than W, so events
older than W are final and are processed in event-time order (ties: impressions first, then by
event id). That order makes the statistics exact as of each impression and the output the same
whatever the arrival order, the batch sizes or the number of processes.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import math
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import numpy as np
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulLogic
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    Sink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from features.client import mark_key
from features.history import HISTORY_JOB, HistoryWriter
from features.paths import object_store
from features.redis_conn import connect
from features.samples import (
    LABELS,
    STAT_FEATURES,
    Sample,
    SampleBatch,
    encode_batch,
    write_sample_part,
)
from features.schema import COUNTS
from features.windows import COMPLETION_FRACTION, METRICS, TYPE_METRIC, WINDOWS
from streams.config import DEFAULT_LIMITS, EventLimits, SamplesConfig
from streams.errors import EventError
from streams.events import Event, dead_letter, encode_dead_letter, encode_event
from streams.ingest import Columns, columns_of, ingest_flow, shard_cache
from streams.kafka_io import RawBatch
from streams.retry import with_retry
from streams.tiles import PLAY, TileStore
from streams.tiles import event_metrics as tile_metrics

FLOW = "samples"
STEP_MS = math.gcd(*(w.hop_ms for w in WINDOWS))
"""Within one span of this length no tile leaves any window (every hop is a multiple of it)."""
COUNT_COLS = np.array([METRICS.index(m) for m in COUNTS])
"""The metric columns that `STAT_FEATURES` count, per window."""
_IMPRESSION = TYPE_METRIC["impression"]
TS, KIND, WATCH_MS, DURATION_MS = range(4)
"""Columns of an events array (`event_arrays`)."""
REASONS = (
    "impressions",
    "samples",
    "kept_positive",
    "kept_negative",
    "dropped_negative",
    "attached",
    "orphan_action",
    "late_action",
    "duplicate",
    "late_event",
    "missing_note_stats",
)
"""Counters a `JoinReport` carries (see docs/samples.md)."""


def column_arrays(cols: Columns) -> np.ndarray:
    """The (n, 4) int64 columns ts, metric index of the type, watch_ms, duration_ms of `cols`."""
    return np.column_stack([cols.ts, cols.kind, cols.watch, cols.duration])


def event_arrays(events: Sequence[Event]) -> np.ndarray:
    """`column_arrays` of `events` (where no ingest step made their columns)."""
    return column_arrays(columns_of(0, list(events)))


@dataclass(frozen=True, slots=True)
class Part:
    """The events of one raw batch that one shard owns, with the partition's high-water mark."""

    shard: str
    partition: int
    hwm: int
    events: list[Event]
    arrays: np.ndarray | None = None
    """`event_arrays(events)` (None: computed by the shard)."""


@dataclass(frozen=True, slots=True)
class NoteHalves:
    """Note statistics of impressions (in impression order), for the user shard owning them."""

    sample_ids: list[str]
    ts: list[int]
    stats: np.ndarray  # (n, len(STAT_FEATURES))


@dataclass(frozen=True, slots=True)
class JoinReport:
    """Counts of one user shard since its previous report (keys from `REASONS`)."""

    shard: str
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class HistoryUpdate:
    """Click histories of one user shard after the clicks that changed them, in event-time order.

    Entry j: after a click of `users[j]` at `ts[j]`, the user's history (newest first, what a
    sample of an impression after ts[j] carries). A user can have several entries; the last is
    the newest.
    """

    shard: str
    users: list[str]
    histories: list[list[str]]
    ts: list[int]


def keep_draw(sample_id: str) -> float:
    """A uniform number in [0, 1) fixed by the sample id (negative down-sampling draws it)."""
    digest = hashlib.blake2b(sample_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _late_letter(event: Event, detail: str, partition: int | None) -> KafkaSinkMessage:
    err = EventError("late", "ts", detail)
    letter = dead_letter(encode_event(event), err, FLOW, partition=partition)
    return KafkaSinkMessage(event.user_id.encode(), encode_dead_letter(letter))


def shard_parts(cols: Columns, hwm: int | None, shards: int) -> list[tuple[str, Part]]:
    """One part per user shard and per note shard; every one carries the partition's mark.

    Each shard gets a part even without events, so all shards share one watermark.
    """
    if hwm is None:
        return []
    cache, n, events = shard_cache(shards), len(cols.events), cols.events
    arrays = column_arrays(cols)
    out = []
    for side, ids in (("u", cols.users), ("n", cols.notes)):
        dest = np.fromiter((cache[key] for key in ids), dtype=np.int64, count=n)
        order = np.argsort(dest, kind="stable")  # by shard, arrival order within
        cuts = np.searchsorted(dest[order], np.arange(shards + 1)).tolist()
        for s in range(shards):
            sel = order[cuts[s] : cuts[s + 1]]
            key = f"{side}{s}"
            out.append(
                (
                    key,
                    Part(key, cols.partition, hwm, [events[i] for i in sel.tolist()], arrays[sel]),
                )
            )
    return out


def point_in_time(store: TileStore, arrays: np.ndarray, ids: list[str]) -> np.ndarray:
    """Add final events (sorted by ts) to `store`; return each impression's counts before it.

    The counts of an impression at time t are its entity's `STAT_FEATURES` windows as of t over
    the events with ts < t (its own and later events excluded): the store's sums as of t (the
    events before this call, less the tiles that left each window by t) plus this call's
    events of the same entity with ts < t whose tile is inside the window at t (per window, a
    range of time ending at t: two searches in one sort of the events by entity and time).
    Tiles leave windows only at multiples of `STEP_MS`, so the store's clock is moved once per
    span of that length holding impressions, and the events are added once, at the end.

    Args:
        store: the shard's tiles; holds every final event before `arrays`.
        arrays: the newly final events (`event_arrays`), in (ts, impressions first, event id)
            order.
        ids: the entity id of each event (user or note).

    Returns:
        (impressions, len(STAT_FEATURES)) int64 counts, in the impressions' order.
    """
    ts = arrays[:, TS]
    metrics = tile_metrics(arrays[:, KIND], arrays[:, WATCH_MS], arrays[:, DURATION_MS])  # (n, M)
    imp = np.flatnonzero(arrays[:, KIND] == _IMPRESSION)
    out = np.zeros((len(imp), len(STAT_FEATURES)), dtype=np.int64)
    if not len(ts):
        return out
    rows = store.rows_for(ids)
    span = ts // STEP_MS
    emptied = []
    if len(imp):
        imp_rows, imp_ts = rows[imp], ts[imp]
        cuts = np.flatnonzero(np.r_[True, span[imp][1:] != span[imp][:-1], True]).tolist()
        per_window = len(COUNT_COLS)
        for lo, hi in itertools.pairwise(cuts):
            span_start = ts[np.searchsorted(span, span[imp[lo]])]  # the span's first event
            emptied.append(store.advance(int(span_start)))
            r = imp_rows[lo:hi, None]
            for j, w in enumerate(WINDOWS):
                out[lo:hi, j * per_window : (j + 1) * per_window] = store.sums[w.name][
                    r, COUNT_COLS
                ]
        # This call's earlier events of the same entity, inside each window as of the impression.
        times = np.unique(ts)
        width = len(times) + 1
        key = rows * width + np.searchsorted(times, ts)
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        cum = np.zeros((len(ts) + 1, per_window), dtype=np.int64)
        np.cumsum(metrics[order][:, COUNT_COLS], axis=0, out=cum[1:])
        upto = np.searchsorted(sorted_key, imp_rows * width + np.searchsorted(times, imp_ts))
        for j, w in enumerate(WINDOWS):
            start = (imp_ts // w.hop_ms - w.tiles + 1) * w.hop_ms  # the window's oldest tile
            since = np.searchsorted(sorted_key, imp_rows * width + np.searchsorted(times, start))
            out[:, j * per_window : (j + 1) * per_window] += cum[upto] - cum[since]
    emptied.append(store.advance(int(ts[np.searchsorted(span, span[-1])])))  # the last span
    store.add(rows, ts, metrics)
    emptied.append(rows)
    store.release(np.concatenate(emptied))  # entities whose windows all emptied (docs/stats.md)
    return out


def release_order(ts: np.ndarray, later: np.ndarray, ids: list[str]) -> np.ndarray:
    """The order that processes events by (ts, impressions first (`later` False), event id).

    Sorted by numpy on the ids as fixed-width strings (the same order as Python's: code points),
    unless an id holds a NUL character, which such strings drop at the end.
    """
    if "\x00" in "".join(ids):
        keys = later.tolist()
        stamps = ts.tolist()
        return np.array(
            sorted(range(len(ids)), key=lambda j: (stamps[j], keys[j], ids[j])), dtype=np.int64
        )
    return np.lexsort((np.array(ids), later, ts))


@dataclass
class ShardCore:
    """Recoverable state every shard has: tiles, watermark inputs, not-yet-final events."""

    store: TileStore = field(default_factory=TileStore)
    hwm: dict[int, int] = field(default_factory=dict)
    buffer: list[Event] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    recent: deque[tuple[np.ndarray, list[str]]] = field(default_factory=deque)
    """The released events' (ts, event ids), one pair of columns per release, in release order."""
    shard: str = ""
    arrays: np.ndarray = field(default_factory=lambda: event_arrays([]))
    """`event_arrays(buffer)`."""

    def __setstate__(self, state: dict) -> None:
        if "arrays" not in state:  # a snapshot from before the buffer's arrays
            state = {**state, "arrays": event_arrays(state["buffer"])}
        recent = state["recent"]
        if recent and not isinstance(recent[0][0], np.ndarray):  # one (ts, id) per event
            ts = np.array([t for t, _ in recent], dtype=np.int64)
            state = {**state, "recent": deque([(ts, [i for _, i in recent])])}
        self.__dict__.update(state)


class _ShardLogic:
    """Watermark, de-duplication and the event-time ordered release of final events, over the
    recoverable `state` of a shard (its `core` shared by every shard)."""

    def __init__(
        self,
        state: NoteState | UserState,
        config: SamplesConfig,
        partitions: Sequence[int],
        recoverable: bool,
    ) -> None:
        self.state, self.recoverable = state, recoverable
        self.core, self.config = state.core, config
        self.partitions = tuple(partitions)
        start = time.monotonic()
        self.heard = dict.fromkeys(self.partitions, start)
        self.idle_s = config.idle_partition_ms / 1000
        self.watermark: float | None = None

    def _compute_watermark(self) -> float | None:
        now, hwm = time.monotonic(), self.core.hwm
        active = [p for p in self.partitions if now - self.heard.get(p, now) <= self.idle_s]
        if any(p not in hwm for p in active):
            return None
        marks = [hwm[p] for p in active] or list(hwm.values())
        if not marks:
            return None
        return min(marks) - self.config.allowed_lateness_ms

    def _receive(self, part: Part, counts: Counter) -> list[Event]:
        """Take a part in; return the events refused as late (already counted)."""
        core = self.core
        core.shard = part.shard
        core.hwm[part.partition] = max(part.hwm, core.hwm.get(part.partition, part.hwm))
        self.heard[part.partition] = time.monotonic()
        late, keep = [], []
        w, seen, events = self.watermark, core.seen, part.events
        arrays = event_arrays(events) if part.arrays is None else part.arrays
        ids = [e.event_id for e in events]
        fresh = set(ids)
        if (
            len(fresh) == len(ids)
            and seen.isdisjoint(fresh)
            and (w is None or not len(ids) or arrays[:, TS].min() >= w)
        ):
            seen |= fresh  # no duplicate, nothing late: what the loop below would do, in C
            keep = range(len(ids))
        else:
            for i, e in enumerate(events):
                if e.event_id in seen:
                    counts["duplicate"] += 1
                elif w is not None and e.ts < w:
                    late.append(e)
                else:
                    seen.add(e.event_id)
                    keep.append(i)
        if keep:
            if len(keep) == len(events):
                core.buffer.extend(events)
            else:
                core.buffer.extend(events[i] for i in keep)
                arrays = arrays[keep]
            core.arrays = np.concatenate([core.arrays, arrays]) if len(core.arrays) else arrays
        return late

    def _release(self, final: bool) -> tuple[list[Event], np.ndarray]:
        """Advance the watermark; return the events that became final, in processing order
        (ts, impressions first, event id), and their `event_arrays`."""
        core = self.core
        w = math.inf if final else self._compute_watermark()
        nothing = [], core.arrays[:0]
        if w is None or (self.watermark is not None and w <= self.watermark):
            return nothing
        self.watermark = w
        if not core.buffer:
            return nothing
        final_ = core.arrays[:, TS] < w
        ready = np.flatnonzero(final_)
        if not len(ready):
            return nothing
        buffer, picked = core.buffer, ready.tolist()
        ids = [buffer[i].event_id for i in picked]
        ts = core.arrays[ready, TS]
        order = release_order(ts, core.arrays[ready, KIND] != _IMPRESSION, ids)
        events = [buffer[i] for i in ready[order].tolist()]
        arrays = core.arrays[ready[order]]
        if len(ready) == len(buffer):
            core.buffer, core.arrays = [], core.arrays[:0]
        else:
            rest = np.flatnonzero(~final_)
            core.buffer, core.arrays = [buffer[i] for i in rest.tolist()], core.arrays[rest]
        core.recent.append((ts[order], [ids[j] for j in order.tolist()]))
        self._forget(w - self.config.dedupe_horizon_ms)
        return events, arrays

    def _forget(self, horizon: float) -> None:
        """Forget the ids of released events older than `horizon`, oldest released first, up to
        the first that is not (as one event at a time would)."""
        recent, seen = self.core.recent, self.core.seen
        while recent:
            ts, ids = recent[0]
            young = ts >= horizon
            if not young.any():
                seen.difference_update(ids)
                recent.popleft()
                continue
            cut = int(np.argmax(young))
            if cut:
                seen.difference_update(ids[:cut])
                recent[0] = (ts[cut:], ids[cut:])
            return

    def _idle_wakeup(self, waiting: bool) -> datetime | None:
        """When a partition would turn idle (letting the watermark move), if anything waits."""
        if not waiting:
            return None
        now = time.monotonic()
        waits = [self.heard[p] + self.idle_s - now for p in self.partitions]
        future = [w for w in waits if w > 0]
        if not future:
            return None
        return datetime.now(UTC) + timedelta(seconds=min(future) + 0.001)


@dataclass
class NoteState:
    """Recoverable state of a note shard."""

    core: ShardCore = field(default_factory=ShardCore)


class NoteLogic(_ShardLogic, StatefulLogic[Part, tuple[str, NoteHalves], NoteState]):
    """Computes the point-in-time note statistics of each impression of its notes."""

    state: NoteState

    def on_item(self, value: Part) -> tuple[list[tuple[str, NoteHalves]], bool]:
        # Events refused here are counted (and dead-lettered) by the user shard, which sees
        # the same events; a user shard whose watermark is ahead never waits for their halves.
        self._receive(value, Counter())
        return self._emit(*self._release(final=False)), StatefulLogic.RETAIN

    def _emit(self, ready: list[Event], arrays: np.ndarray) -> list[tuple[str, NoteHalves]]:
        if not ready:
            return []
        stats = point_in_time(self.core.store, arrays, [e.note_id for e in ready])
        imp = np.flatnonzero(arrays[:, KIND] == _IMPRESSION)
        shown = [ready[i] for i in imp.tolist()]
        cache = shard_cache(self.config.shards)
        dest = np.fromiter((cache[e.user_id] for e in shown), dtype=np.int64, count=len(shown))
        stamps = arrays[imp, TS]
        out = []
        for s in np.unique(dest).tolist():
            sel = np.flatnonzero(dest == s)
            ids = [shown[i].event_id for i in sel.tolist()]
            out.append((f"u{s}", NoteHalves(ids, stamps[sel].tolist(), stats[sel])))
        return out

    def on_notify(self) -> tuple[list[tuple[str, NoteHalves]], bool]:
        return self._emit(*self._release(final=False)), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[tuple[str, NoteHalves]], bool]:
        return self._emit(*self._release(final=True)), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return self._idle_wakeup(bool(self.core.buffer))

    def snapshot(self) -> NoteState | None:
        return copy.deepcopy(self.state) if self.recoverable else None


@dataclass(slots=True)
class Pending:
    """An open impression as recovery stores written before `OpenImpressions` hold it (read by
    `UserState.__setstate__`)."""

    event: Event
    user_stats: list[int]
    note_stats: list[int] | None = None
    labels: dict[str, int] = field(default_factory=dict)
    watch_ms: int = 0
    duration_ms: int = 0
    history: list[str] = field(default_factory=list)


JoinKey = tuple[str, str, str]
"""(user id, note id, request id or "") of an impression and of the actions joined to it."""
_STATS = len(STAT_FEATURES)
_LABEL_COL = np.full(max(TYPE_METRIC.values()) + 1, -1, dtype=np.int64)
"""Metric index of an event type -> its column in `LABELS` (-1: not a label)."""
for _j, _label in enumerate(LABELS):
    _LABEL_COL[TYPE_METRIC[_label]] = _j
_CLICK = LABELS.index("click")
_COLUMNS = {
    "ts": ((), np.int64),
    "user_stats": ((_STATS,), np.int64),
    "note_stats": ((_STATS,), np.int64),
    "has_note": ((), np.bool_),
    "labels": ((len(LABELS),), np.int8),
    "watch": ((), np.int64),
    "duration": ((), np.int64),
    "item_duration": ((), np.int64),
}
"""Array columns of `OpenImpressions`: name -> (shape of a row, dtype)."""


def _empty(name: str, rows: int = 0) -> np.ndarray:
    shape, dtype = _COLUMNS[name]
    return np.zeros((rows, *shape), dtype=dtype)


@dataclass
class OpenImpressions:
    """A user shard's impressions whose window is open or whose note statistics are awaited, in
    processing order, as columns.

    Row r is the impression at absolute position `first + r` (positions never change, so the
    join keys and ids can point at them); rows before `start` are closed and dropped when the
    arrays next grow; the entries of `by_key` and `index` pointing at closed impressions (before
    `opened`: ignored) are dropped then too once they outnumber the open ones. The arrays have
    room for more rows than `events` holds.
    """

    events: list[Event] = field(default_factory=list)
    keys: list[JoinKey] = field(default_factory=list)
    history: list[tuple[str, ...] | deque[str]] = field(default_factory=list)
    """The user's clicked notes before the impression, oldest first (the state's own tuple)."""
    ts: np.ndarray = field(default_factory=lambda: _empty("ts"))
    user_stats: np.ndarray = field(default_factory=lambda: _empty("user_stats"))
    note_stats: np.ndarray = field(default_factory=lambda: _empty("note_stats"))
    """Zeros until the note side's half arrives (`has_note`)."""
    has_note: np.ndarray = field(default_factory=lambda: _empty("has_note"))
    labels: np.ndarray = field(default_factory=lambda: _empty("labels"))
    """1 where an action of that `LABELS` column was attached."""
    watch: np.ndarray = field(default_factory=lambda: _empty("watch"))
    """Summed watch_ms of the attached plays."""
    duration: np.ndarray = field(default_factory=lambda: _empty("duration"))
    """Largest duration_ms of the attached plays (0: none)."""
    item_duration: np.ndarray = field(default_factory=lambda: _empty("item_duration"))
    """The impression's own duration_ms (0: unknown)."""
    first: int = 0
    start: int = 0
    by_key: dict[JoinKey, int] = field(default_factory=dict)
    """Join key -> position of the newest impression with it."""
    index: dict[str, int] = field(default_factory=dict)
    """Sample id -> position of the impression."""

    def __len__(self) -> int:
        return len(self.events) - self.start

    @property
    def opened(self) -> int:
        """The position of the oldest open impression."""
        return self.first + self.start

    @property
    def end(self) -> int:
        """The absolute position the next appended impression gets."""
        return self.first + len(self.events)

    def append(
        self,
        events: list[Event],
        keys: list[JoinKey],
        history: list[tuple[str, ...] | deque[str]],
        arrays: np.ndarray,
        user_stats: np.ndarray,
    ) -> None:
        """Open impressions `events` (their `event_arrays` and point-in-time user statistics)."""
        n, m = len(self.events), len(events)
        if n + m > len(self.ts):
            self._regrow(m)
            n = len(self.events)
        rows = slice(n, n + m)
        for name in ("note_stats", "has_note", "labels", "watch", "duration"):
            getattr(self, name)[rows] = 0
        self.ts[rows] = arrays[:, TS]
        self.item_duration[rows] = arrays[:, DURATION_MS]
        self.user_stats[rows] = user_stats
        self.events.extend(events)
        self.keys.extend(keys)
        self.history.extend(history)

    def _regrow(self, more: int) -> None:
        """Drop the closed rows; make room for the open ones and `more` (a quarter more)."""
        start, live = self.start, len(self.events) - self.start
        capacity = max(64, (live + more) * 5 // 4)
        for name in _COLUMNS:
            grown = _empty(name, capacity)
            grown[:live] = getattr(self, name)[start : start + live]
            setattr(self, name, grown)
        del self.events[:start], self.keys[:start], self.history[:start]
        self.first += start
        self.start = 0
        first = self.first
        if len(self.index) > 2 * (live + more):  # mostly closed ones: drop them
            self.by_key = {k: at for k, at in self.by_key.items() if at >= first}
            self.index = {sid: at for sid, at in self.index.items() if at >= first}


@dataclass
class UserState:
    """Recoverable state of a user shard."""

    core: ShardCore = field(default_factory=ShardCore)
    open: OpenImpressions = field(default_factory=OpenImpressions)
    early: dict[str, tuple[int, Sequence[int]]] = field(default_factory=dict)
    closed: dict[JoinKey, int] = field(default_factory=dict)
    closed_order: deque[tuple[int, JoinKey]] = field(default_factory=deque)
    batch: list[Sample] = field(default_factory=list)
    seq: int = 0
    counts: Counter = field(default_factory=Counter)
    history: dict[str, tuple[str, ...] | deque[str]] = field(default_factory=dict)
    """User -> the notes they clicked, oldest first (at most `history_len`), in event time
    (tuples; recovery stores written before hold deques, read the same way)."""

    def __setstate__(self, state: dict) -> None:
        if "pending" in state:  # a snapshot from before `OpenImpressions`: `Pending` objects
            state = dict(state)
            state["open"] = _opened(state.pop("pending"), state.pop("queue"), state.pop("by_key"))
        self.__dict__.update(state)


def _opened(
    pending: dict[str, Pending], queue: deque[str], by_key: dict[JoinKey, str]
) -> OpenImpressions:
    """The `OpenImpressions` of an older snapshot's `Pending` objects (`by_key`: their ids)."""
    shown = [pending[sid] for sid in queue]
    block = OpenImpressions()
    events = [p.event for p in shown]
    block.append(
        events,
        [(e.user_id, e.note_id, e.request_id or "") for e in events],
        [tuple(reversed(p.history)) for p in shown],
        event_arrays(events),
        np.array([p.user_stats for p in shown], dtype=np.int64).reshape(len(shown), _STATS),
    )
    for r, p in enumerate(shown):
        if p.note_stats is not None:
            block.note_stats[r], block.has_note[r] = p.note_stats, True
        for label, value in p.labels.items():
            block.labels[r, LABELS.index(label)] = value
        block.watch[r], block.duration[r] = p.watch_ms, p.duration_ms
    block.index = {sid: r for r, sid in enumerate(queue)}
    block.by_key = {k: block.index[sid] for k, sid in by_key.items()}
    return block


def _add_counts(counts: Counter, **added: int) -> None:
    """Add the non-zero `added` to `counts` (a zero would appear in the next report)."""
    for reason, n in added.items():
        if n:
            counts[reason] += n


Out = SampleBatch | JoinReport | HistoryUpdate | KafkaSinkMessage


class UserLogic(_ShardLogic, StatefulLogic[Part | NoteHalves, Out, UserState]):
    """Joins its users' impressions with their actions; closes windows; batches samples."""

    state: UserState

    def __init__(
        self,
        state: UserState,
        config: SamplesConfig,
        partitions: Sequence[int],
        recoverable: bool,
        emit_history: bool = False,
    ) -> None:
        super().__init__(state, config, partitions, recoverable)
        self.window = config.attribution_window_ms
        self.history_len = config.history_len
        self.batch_due: datetime | None = None
        self.emit_history = emit_history
        self._updates: HistoryUpdate | None = None

    def on_item(self, value: Part | NoteHalves) -> tuple[list[Out], bool]:
        st = self.state
        out: list[Out] = []
        if isinstance(value, NoteHalves):
            self._take_halves(value)
        else:
            for e in self._receive(value, st.counts):
                st.counts["late_event"] += 1
                detail = f"ts {e.ts} is older than the joiner's watermark {self.watermark}"
                out.append(_late_letter(e, detail, value.partition))
            self._process(*self._release(final=False))
        self._close(final=False, out=out)
        return self._with_report(out), StatefulLogic.RETAIN

    def _take_halves(self, halves: NoteHalves) -> None:
        st, w, block = self.state, self.watermark, self.state.open
        index = block.index
        at = np.array([index.get(sid, -1) for sid in halves.sample_ids], dtype=np.int64)
        found = at >= block.opened
        if found.any():
            rows = at[found] - block.first
            block.note_stats[rows] = halves.stats[found]
            block.has_note[rows] = True
        if not found.all():  # halves ahead of their impressions, or of impressions refused late
            for j in np.flatnonzero(~found).tolist():
                ts = halves.ts[j]
                if w is None or ts >= w:
                    st.early[halves.sample_ids[j]] = (ts, halves.stats[j])

    def _process(self, ready: list[Event], arrays: np.ndarray) -> None:
        """Open the released impressions; join the released actions to the open ones."""
        if not ready:
            return
        st = self.state
        stats = point_in_time(st.core.store, arrays, [e.user_id for e in ready])
        block, early, closed = st.open, st.early, st.closed
        by_key, index, opened = block.by_key, block.index, block.opened
        past_of, clicks_kept = st.history.get, bool(self.history_len)
        at = block.end  # the position of the next impression
        shown, keys, pasts, halves, halves_at = [], [], [], [], []
        acts, act_at = [], []  # actions whose key has an open impression, and its position
        late = orphans = 0
        for i, e in enumerate(ready):  # counters summed locally, added once
            key = (e.user_id, e.note_id, e.request_id or "")
            if e.type == "impression":
                sid = e.event_id
                if early:
                    half = early.pop(sid, None)
                    if half is not None:
                        halves.append(half[1])
                        halves_at.append(at)
                shown.append(e)
                keys.append(key)
                pasts.append(past_of(e.user_id, ()))
                by_key[key] = index[sid] = at
                at += 1
                continue
            found = by_key.get(key, -1)
            if found < opened:  # none open
                if key in closed:
                    late += 1
                else:
                    orphans += 1
            else:
                acts.append(i)
                act_at.append(found)
            if e.type == "click" and clicks_kept:
                self._remember_click(e)
        if shown:
            block.append(shown, keys, pasts, arrays[arrays[:, KIND] == _IMPRESSION], stats)
            if halves:
                rows = np.array(halves_at, dtype=np.int64) - block.first
                block.note_stats[rows] = halves
                block.has_note[rows] = True
        attached = 0
        if acts:
            act = np.array(acts, dtype=np.int64)
            rows = np.array(act_at, dtype=np.int64) - block.first
            inside = arrays[act, TS] <= block.ts[rows] + self.window
            act, rows = act[inside], rows[inside]
            late += len(inside) - len(act)
            attached = len(act)
            kinds = arrays[act, KIND]
            play = kinds == PLAY
            if play.any():
                np.add.at(block.watch, rows[play], arrays[act[play], WATCH_MS])
                np.maximum.at(block.duration, rows[play], arrays[act[play], DURATION_MS])
            cols = _LABEL_COL[kinds]
            labelled = cols >= 0
            block.labels[rows[labelled], cols[labelled]] = 1
        _add_counts(
            st.counts,
            impressions=len(shown),
            attached=attached,
            late_action=late,
            orphan_action=orphans,
        )
        if st.early:
            w = self.watermark
            st.early = {k: v for k, v in st.early.items() if v[0] >= w}

    def _remember_click(self, e: Event) -> None:
        """Add a click to its user's history (a note clicked again moves to the newest end)."""
        past = self.state.history.get(e.user_id, ())
        # A tuple, rebuilt per click: 8 bytes a note, where a deque takes ~600 bytes a user.
        past = (*(n for n in past if n != e.note_id), e.note_id)[-self.history_len :]
        self.state.history[e.user_id] = past
        if self.emit_history:
            if self._updates is None:
                self._updates = HistoryUpdate(self.core.shard, [], [], [])
            self._updates.users.append(e.user_id)
            self._updates.histories.append(list(reversed(past)))
            self._updates.ts.append(e.ts)

    def _close(self, final: bool, out: list[Out]) -> None:
        """Close the open impressions from the oldest up to the first whose window is still open
        or whose note statistics are awaited (all at the end of input); batch their samples."""
        st, cfg = self.state, self.config
        w, window, block = self.watermark, self.window, st.open
        lo, hi = block.start, len(block.events)
        if final:
            cut = hi
        elif w is None or lo == hi:
            cut = lo
        else:
            wait = (block.ts[lo:hi] + window >= w) | ~block.has_note[lo:hi]
            cut = lo + int(np.argmax(wait)) if wait.any() else hi
        if cut > lo:
            self._close_rows(lo, cut, out)
        closed, closed_order = st.closed, st.closed_order
        if w is not None:
            while closed_order and closed_order[0][0] + window < w:
                deadline, key = closed_order.popleft()
                if closed.get(key) == deadline:
                    del closed[key]
        if st.batch and self.batch_due is None:
            self.batch_due = datetime.now(UTC) + timedelta(milliseconds=cfg.batch_max_delay_ms)
        if final and st.batch:
            out.append(self._flush_batch())

    def _close_rows(self, lo: int, hi: int, out: list[Out]) -> None:
        """Close rows [lo, hi) of the open impressions: a sample each, kept if positive or drawn."""
        st, block = self.state, self.state.open
        rate = self.config.negative_keep_rate
        events, keys = block.events[lo:hi], block.keys[lo:hi]
        deadlines = (block.ts[lo:hi] + self.window).tolist()
        st.closed.update(zip(keys, deadlines, strict=True))
        st.closed_order.extend(zip(deadlines, keys, strict=True))
        block.start = hi  # their `by_key` and `index` entries now point before `opened`
        clicked = block.labels[lo:hi, _CLICK] > 0
        positive = int(clicked.sum())
        keep = clicked.copy()
        drawn = np.flatnonzero(~clicked)
        draws = np.fromiter(
            (keep_draw(events[r].event_id) for r in drawn.tolist()),
            dtype=np.float64,
            count=len(drawn),
        )
        keep[drawn[draws < rate]] = True
        rows = np.flatnonzero(keep)
        rates = np.where(clicked[rows], 1.0, rate)
        _add_counts(
            st.counts,
            missing_note_stats=int((~block.has_note[lo:hi]).sum()),
            samples=hi - lo,
            kept_positive=positive,
            kept_negative=len(rows) - positive,
            dropped_negative=hi - lo - len(rows),
        )
        batch, size = st.batch, self.config.batch_size
        for sample in self._samples(rows + lo, rates.tolist()):
            batch.append(sample)
            if len(batch) >= size:
                out.append(self._flush_batch())
                batch = st.batch

    def _samples(self, at: np.ndarray, rates: list[float]) -> list[Sample]:
        """The samples of open impressions at rows `at` (int64; kept with `rates`)."""
        block = self.state.open
        rows = at.tolist()
        watch, played = block.watch[at], block.duration[at]
        item = block.item_duration[at]
        duration = np.where(played == 0, item, played)  # no play: the impression's own
        # Sample's label fields are LABELS, in that order, between `position` and `watch_ms`.
        return [
            Sample(
                e.event_id,
                e.ts,
                e.user_id,
                e.note_id,
                e.author_id or "",
                e.category or "",
                e.request_id or "",
                -1 if e.position is None else e.position,
                *labels,
                w,
                d,
                int(d > 0 and w >= COMPLETION_FRACTION * d),
                keep_rate,
                u,
                n,
                i,
                list(reversed(block.history[r])),
            )
            for r, e, labels, w, d, keep_rate, u, n, i in zip(
                rows,
                (block.events[r] for r in rows),
                block.labels[at].tolist(),
                watch.tolist(),
                duration.tolist(),
                rates,
                block.user_stats[at].tolist(),
                block.note_stats[at].tolist(),
                item.tolist(),
                strict=True,
            )
        ]

    def _flush_batch(self) -> SampleBatch:
        st = self.state
        samples, st.batch = st.batch, []
        batch = SampleBatch(
            batch_id=f"{FLOW}-{st.core.shard}-{st.seq:09d}",
            created_ms=int(time.time() * 1000),
            max_ts=max(s.ts for s in samples),
            samples=samples,
        )
        st.seq += 1
        self.batch_due = None
        return batch

    def _with_report(self, out: list[Out]) -> list[Out]:
        st = self.state
        if self._updates is not None:
            out.append(self._updates)
            self._updates = None
        if st.counts and any(isinstance(x, SampleBatch) for x in out):
            out.append(JoinReport(st.core.shard, dict(st.counts)))
            st.counts = Counter()
        return out

    def on_notify(self) -> tuple[list[Out], bool]:
        out: list[Out] = []
        self._process(*self._release(final=False))
        self._close(final=False, out=out)
        if self.state.batch and self.batch_due and datetime.now(UTC) >= self.batch_due:
            out.append(self._flush_batch())
        return self._with_report(out), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[Out], bool]:
        out: list[Out] = []
        self._process(*self._release(final=True))
        self._close(final=True, out=out)
        st = self.state
        if self._updates is not None:
            out.append(self._updates)
            self._updates = None
        if st.counts:
            out.append(JoinReport(st.core.shard, dict(st.counts)))
            st.counts = Counter()
        return out, StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        waiting = bool(self.core.buffer or len(self.state.open))
        times = [t for t in (self.batch_due, self._idle_wakeup(waiting)) if t is not None]
        return min(times) if times else None

    def snapshot(self) -> UserState | None:
        return copy.deepcopy(self.state) if self.recoverable else None


LogState = tuple[str, int, list[Sample]]


class _LogPartition(StatefulSinkPartition[SampleBatch, LogState]):
    def __init__(
        self, directory: Path | str, rows: int, interval_s: float, resume: LogState | None
    ) -> None:
        self._dir, self._rows, self._interval_s = directory, rows, interval_s
        self._token, self._seq, self._buffer = resume or (uuid.uuid4().hex[:8], 0, [])
        self._since = time.monotonic()
        if isinstance(directory, Path):
            directory.mkdir(parents=True, exist_ok=True)

    def write_batch(self, items: list[SampleBatch]) -> None:
        if not self._buffer:
            self._since = time.monotonic()
        for batch in items:
            self._buffer.extend(batch.samples)
        old = time.monotonic() - self._since >= self._interval_s
        if len(self._buffer) >= self._rows or (self._buffer and old):
            self._write()

    def _write(self) -> None:
        write_sample_part(self._dir, f"part-{self._token}-{self._seq:06d}.parquet", self._buffer)
        self._seq += 1
        self._buffer = []

    def snapshot(self) -> LogState:
        return self._token, self._seq, list(self._buffer)

    def close(self) -> None:
        if self._buffer:
            self._write()


class SampleLogSink(FixedPartitionedSink[SampleBatch, LogState]):
    """The parquet log: part files of `rows` samples, written aside then renamed into place.

    Its state (buffered samples, next part number) is snapshotted with the flow, so a restart
    after a crash rewrites the same part names; samples re-emitted after a crash can appear in
    two parts, so readers de-duplicate by `sample_id` (`read_sample_log` does).
    """

    def __init__(self, directory: Path | str, rows: int = 20_000, interval_s: float = 60.0) -> None:
        fs, path = object_store(directory)  # a local directory, or an object store's URL
        self._dir = Path(path) if fs is None else str(directory)
        self._rows, self._interval_s = rows, interval_s

    def list_parts(self) -> list[str]:
        return ["log"]

    def build_part(self, step_id: str, for_part: str, resume_state: LogState | None):
        del step_id, for_part  # one partition
        return _LogPartition(self._dir, self._rows, self._interval_s, resume_state)


class _HistoryPartition(StatelessSinkPartition[HistoryUpdate]):
    def __init__(self, redis_url: str, project: str) -> None:
        self._redis = connect(redis_url, socket_timeout=5, socket_connect_timeout=5)
        self._writer = HistoryWriter(self._redis, project)
        self._mark = mark_key(project, HISTORY_JOB)

    def write_batch(self, items: list[HistoryUpdate]) -> None:
        users = [u for x in items for u in x.users]
        if not users:
            return
        histories = [h for x in items for h in x.histories]
        ts = [t for x in items for t in x.ts]
        mark = (self._mark, max(ts))
        with_retry(lambda: self._writer.write(users, histories, ts, mark), "history sink")

    def close(self) -> None:
        self._redis.close()


class HistorySink(DynamicSink[HistoryUpdate]):
    """Writes the joiner's click histories into Feast's online store (view `user_history`).

    Each worker writes the updates of its user shards, synchronously in `write_batch`, so a
    history is stored before the epoch that produced it commits; after a crash the updates of
    the epochs since are written again (whole lists: the same values). The event-time mark of
    the newest click written is kept at `<project>:hwm:history` (`FeatureClient.as_of`).
    """

    def __init__(self, redis_url: str, project: str) -> None:
        self._redis_url, self._project = redis_url, project

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _HistoryPartition:
        del step_id, worker_index, worker_count
        return _HistoryPartition(self._redis_url, self._project)


def build_flow(
    source: Source[RawBatch],
    sink: Sink[KafkaSinkMessage],
    log: Sink[tuple[str, SampleBatch]],
    dlq: DynamicSink,
    reports: Sink[JoinReport],
    config: SamplesConfig,
    partitions: Sequence[int],
    recoverable: bool = True,
    limits: EventLimits = DEFAULT_LIMITS,
    history: Sink[HistoryUpdate] | None = None,
) -> Dataflow:
    """Build the sample-joiner dataflow.

    Args:
        source: raw Kafka batches of `interactions` (`KafkaBatchSource` or a `TestingSource`).
        sink: receives one `KafkaSinkMessage` per micro-batch (key batch id, value
            `encode_batch`): a `KafkaSink` on `training-samples` in production.
        log: receives `(batch_id, SampleBatch)`: a `SampleLogSink` in production.
        dlq: receives dead letters (undecodable and late events).
        reports: receives `JoinReport` counters (orphan and late actions, duplicates, ...).
        config: job settings.
        partitions: the input topic's partition ids (all of them hold the watermark).
        recoverable: snapshot the state each epoch (off only when running without recovery).
        limits: event decoding limits.
        history: receives `HistoryUpdate`s, each user's history after each click (with
            `config.history_len` > 0): a `HistorySink` in production; None keeps them in the
            samples only.
    """
    flow, parts = ingest_flow(
        FLOW,
        source,
        dlq,
        limits=limits,
        lateness_ms=config.allowed_lateness_ms,
        shard=lambda cols, hwm: shard_parts(cols, hwm, config.shards),
        recoverable=recoverable,
    )
    sides = op.branch("side", parts, lambda kv: kv[0].startswith("n"))
    halves = op.stateful(
        "notes",
        sides.trues,
        lambda resume: NoteLogic(resume or NoteState(), config, partitions, recoverable),
    )
    to_users = op.key_rm("halves", halves)  # (user shard, NoteHalves)
    joined = op.key_rm(
        "outputs",
        op.stateful(
            "users",
            op.merge("user_inputs", sides.falses, to_users),
            lambda resume: UserLogic(
                resume or UserState(), config, partitions, recoverable, history is not None
            ),
        ),
    )
    is_batch = op.branch("is_batch", joined, lambda x: isinstance(x, SampleBatch))
    batches_out = is_batch.trues
    op.output(
        "kafka",
        op.map(
            "encode", batches_out, lambda b: KafkaSinkMessage(b.batch_id.encode(), encode_batch(b))
        ),
        sink,
    )
    op.output("log", op.map("log_key", batches_out, lambda b: (b.batch_id, b)), log)
    is_report = op.branch("is_report", is_batch.falses, lambda x: isinstance(x, JoinReport))
    op.output("reports", is_report.trues, reports)
    rest = is_report.falses
    if history is not None:
        is_history = op.branch("is_history", rest, lambda x: isinstance(x, HistoryUpdate))
        op.output("history", is_history.trues, history)
        rest = is_history.falses
    op.output("dlq_late", rest, dlq)
    return flow
