"""The stats job: multi-window statistics of every user and note, kept fresh in Feast (Redis).

Dataflow: Kafka batches -> per Kafka partition: decode (bad -> DLQ), columns, late filter
(late -> DLQ, reason `late`) -> split into user shards and note shards (stable hash of the id)
-> per-shard tile rings -> every `flush_interval_ms` of wall time, the changed entities' window
counts (`StatsFlush`) -> the online sink. Every shard receives every batch's event-time maximum,
even when none of the batch's entities belong to it, so all shards share one clock; as that clock
moves, entities whose windows lose a tile are rewritten too ("idle-key refresh"), so a value read
at any time is right as of the flow's event-time high-water mark.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulLogic
from bytewax.outputs import DynamicSink, Sink

from streams.config import DEFAULT_LIMITS, EventLimits, StatsConfig
from streams.ingest import Columns, ingest_flow, shard_cache
from streams.kafka_io import RawBatch
from streams.pacing import PACER
from streams.tiles import TileStore, event_metrics

VIEWS = {"u": "user_stats", "n": "note_stats"}


@dataclass(frozen=True, slots=True)
class ShardBatch:
    """The part of a batch one shard owns, plus the batch's event-time maximum."""

    view: str
    max_ts: int
    ids: list[str]
    ts: np.ndarray
    metrics: np.ndarray


@dataclass(frozen=True, slots=True)
class StatsFlush:
    """Window counts of changed entities of one view, valid as of event time `as_of_ms`."""

    view: str
    ids: list[str]
    counts: dict[str, np.ndarray]
    as_of_ms: int


def shard_batches(cols: Columns, shards: int) -> list[tuple[str, ShardBatch]]:
    """Split a batch into one (shard key, part) per user shard and per note shard."""
    if len(cols.ts) == 0:
        return []
    metrics = event_metrics(cols.kind, cols.watch, cols.duration)
    max_ts = int(cols.ts.max())
    out = []
    for prefix, ids in (("u", cols.users), ("n", cols.notes)):
        cache = shard_cache(shards)
        shard = np.array([cache[k] for k in ids], dtype=np.int64)
        order = np.argsort(shard, kind="stable")
        bounds = np.searchsorted(shard[order], np.arange(shards + 1))
        for s in range(shards):
            sel = order[bounds[s] : bounds[s + 1]]
            part = ShardBatch(
                VIEWS[prefix], max_ts, [ids[i] for i in sel], cols.ts[sel], metrics[sel]
            )
            out.append((f"{prefix}{s}", part))
    return out


@dataclass
class ShardState:
    """Recoverable state of one shard."""

    store: TileStore
    view: str = ""
    dirty: set[int] | None = None


class ShardLogic(StatefulLogic[ShardBatch, StatsFlush, ShardState]):
    """Keeps one shard's tiles; emits the changed entities every flush interval."""

    def __init__(self, state: ShardState, flush_interval_ms: int, recoverable: bool) -> None:
        self.state = state
        self.recoverable = recoverable
        if state.dirty is None:
            state.dirty = set()
        self.interval_s = flush_interval_ms / 1000
        self.next_flush: datetime | None = None

    def on_item(self, value: ShardBatch) -> tuple[list[StatsFlush], bool]:
        st = self.state
        st.view = value.view
        st.dirty.update(st.store.advance(value.max_ts).tolist())
        if value.ids:
            rows = st.store.rows_for(value.ids)
            st.store.add(rows, value.ts, value.metrics)
            st.dirty.update(rows.tolist())
        now = datetime.now(UTC)
        if self.next_flush is None:
            self.next_flush = now + timedelta(seconds=self.interval_s)
        if now >= self.next_flush:
            return self._flush(), StatefulLogic.RETAIN
        return [], StatefulLogic.RETAIN

    def _flush(self) -> list[StatsFlush]:
        st = self.state
        wait = PACER.interval_s(self.interval_s)
        self.next_flush = datetime.now(UTC) + timedelta(seconds=wait)
        if not st.dirty or st.store.clock is None:
            return []
        rows = np.fromiter(sorted(st.dirty), dtype=np.int64, count=len(st.dirty))
        st.dirty.clear()
        counts = st.store.window_counts(rows)
        ids = [st.store.ids[r] for r in rows.tolist()]
        return [StatsFlush(st.view, ids, counts, st.store.clock)]

    def on_notify(self) -> tuple[list[StatsFlush], bool]:
        return self._flush(), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[StatsFlush], bool]:
        return self._flush(), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return self.next_flush if self.state.dirty else None

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
    """
    flow, parts = ingest_flow(
        "stats",
        source,
        dlq,
        limits=limits,
        lateness_ms=config.allowed_lateness_ms,
        shard=lambda cols, _hwm: shard_batches(cols, config.shards),
        dedupe=True,
        recoverable=recoverable,
    )
    flushed = op.stateful(
        "tiles",
        parts,
        lambda resume: ShardLogic(
            resume or ShardState(TileStore()), config.flush_interval_ms, recoverable
        ),
    )
    op.output("online", flushed, sink)
    return flow
