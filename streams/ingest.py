"""The ingest step every flow starts with: decode -> dead letters -> late filter -> shard.

Per Kafka partition (a stateful step keyed by partition, whose state is the partition's event-time
high-water mark): decode the raw batch (bad events -> DLQ with their reason), drop events older
than the high-water mark minus the flow's allowed lateness (-> DLQ, reason `late`), and hand the
rest, as columns, to the flow's `shard` function, which splits them into keyed parts for the
flow's stateful steps. A flow without a lateness bound (`lateness_ms=None`) keeps every event.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import bytewax.operators as op
import numpy as np
from bytewax.connectors.kafka import KafkaSinkMessage
from bytewax.dataflow import Stream
from bytewax.outputs import DynamicSink

from features.windows import TYPE_METRIC
from streams.config import EventLimits
from streams.decode import Decoded, decode_batch
from streams.errors import EventError
from streams.events import Event, dead_letter, encode_dead_letter, encode_event
from streams.kafka_io import RawBatch

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
        )


def to_columns(decoded: Decoded) -> Columns:
    """Turn a decoded batch into columns."""
    events = decoded.events
    n = len(events)
    ts = np.fromiter((e.ts for e in events), dtype=np.int64, count=n)
    kind = np.fromiter((TYPE_METRIC[e.type] for e in events), dtype=np.int64, count=n)
    watch = np.fromiter((e.watch_ms or 0 for e in events), dtype=np.int64, count=n)
    duration = np.fromiter((e.duration_ms or 0 for e in events), dtype=np.int64, count=n)
    return Columns(
        decoded.partition,
        ts,
        kind,
        watch,
        duration,
        [e.user_id for e in events],
        [e.note_id for e in events],
        events,
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


def split_late(
    hwm: int | None, cols: Columns, lateness: int, flow: str
) -> tuple[int | None, Columns, list[KafkaSinkMessage]]:
    """Drop events older than the partition's high-water mark minus `lateness`.

    Returns:
        (new high-water mark, the events on time, dead letters of the late ones).
    """
    if len(cols.ts) == 0:
        return hwm, cols, []
    # An event is late against the high-water mark of everything before it in the partition.
    running = np.maximum.accumulate(cols.ts)
    start = cols.ts[0] if hwm is None else hwm
    before = np.maximum(np.r_[start, running[:-1]], start)
    late = cols.ts < before - lateness
    new_hwm = int(max(start, running[-1]))
    if not late.any():
        return new_hwm, cols, []
    letters = []
    for i in np.flatnonzero(late).tolist():
        err = EventError(
            "late",
            "ts",
            f"ts {cols.ts[i]} is older than the partition's high-water mark "
            f"{before[i]} minus the allowed lateness {lateness} ms",
        )
        letter = dead_letter(encode_event(cols.events[i]), err, flow, partition=cols.partition)
        letters.append(KafkaSinkMessage(cols.users[i].encode(), encode_dead_letter(letter)))
    return new_hwm, cols.take(np.flatnonzero(~late).tolist()), letters


@dataclass(frozen=True, slots=True)
class Ingested(Generic[P]):
    """What the ingest step emits for one raw batch."""

    parts: list[tuple[str, P]]
    dead: list[KafkaSinkMessage]


Shard = Callable[[Columns, int | None], list[tuple[str, P]]]
"""A flow's split of a batch's accepted events (and the partition's high-water mark) into
keyed parts."""


def ingest_batch(
    hwm: int | None,
    batch: RawBatch,
    flow: str,
    limits: EventLimits,
    lateness_ms: int | None,
    shard: Shard,
) -> tuple[int | None, Ingested]:
    """Decode a raw batch, drop late events, and split the rest with `shard`.

    Returns:
        (the partition's new high-water mark, the parts and dead letters).
    """
    decoded = decode_batch(batch, flow, limits.max_bytes)
    cols = to_columns(decoded)
    if lateness_ms is None:
        late: list[KafkaSinkMessage] = []
        if len(cols.ts):
            hwm = int(cols.ts.max()) if hwm is None else max(hwm, int(cols.ts.max()))
    else:
        hwm, cols, late = split_late(hwm, cols, lateness_ms, flow)
    return hwm, Ingested(shard(cols, hwm), decoded.dead + late)


def ingest(
    step_id: str,
    batches: Stream[RawBatch],
    dlq: DynamicSink,
    *,
    flow: str,
    limits: EventLimits,
    lateness_ms: int | None,
    shard: Shard,
) -> Stream[tuple[str, P]]:
    """The ingest operator: raw batches -> the flow's keyed parts; dead letters to `dlq`.

    Args:
        step_id: prefix of the steps' ids.
        batches: raw Kafka batches (`KafkaBatchSource` or a `TestingSource` of `RawBatch`).
        dlq: receives dead letters (undecodable and late events).
        flow: the flow's name, recorded in its dead letters.
        limits: decoding limits (payload size).
        lateness_ms: allowed lateness against the partition's high-water mark; None keeps all.
        shard: splits a batch's accepted events into `(key, part)` items.
    """
    keyed = op.key_on(f"{step_id}_by_partition", batches, lambda b: str(b.partition))
    ingested = op.key_rm(
        f"{step_id}_ingested",
        op.stateful_map(
            step_id,
            keyed,
            lambda hwm, b: ingest_batch(hwm, b, flow, limits, lateness_ms, shard),
        ),
    )
    op.output(f"{step_id}_dlq", op.flat_map(f"{step_id}_dead", ingested, lambda i: i.dead), dlq)
    return op.flat_map(f"{step_id}_parts", ingested, lambda i: i.parts)
