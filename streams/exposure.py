"""The exposure job: impressions from `interactions` -> per-user time-sliced Bloom filters.

Dataflow: Kafka batches -> decode (bad -> DLQ) -> the batch's impressions as columns -> the
sink, which sets their Bloom bits with one Redis call per sink batch (`ExposureWriter`) and
raises the event-time high-water mark that readers measure retention from. Stateless apart from
the Kafka offsets Bytewax records: setting Bloom bits is idempotent, so a job restarted after a
crash re-reads from its last snapshot and sets the same bits again.
"""

from __future__ import annotations

from dataclasses import dataclass

import bytewax.operators as op
import numpy as np
import redis
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from features.exposure import ExposureConfig, ExposureWriter
from streams.decode import Decoded, decode_with_dlq
from streams.kafka_io import RawBatch


@dataclass(frozen=True, slots=True)
class Impressions:
    """The impressions of one batch, as columns, and the batch's largest event time."""

    users: list[str]
    notes: list[str]
    ts: np.ndarray
    max_ts: int


def impressions_of(decoded: Decoded) -> Impressions | None:
    """Keep the impressions of a decoded batch (None when it has no valid event at all).

    A batch without impressions still moves the flow's event-time clock (`max_ts`).
    """
    if not decoded.events:
        return None
    shown = [e for e in decoded.events if e.type == "impression"]
    ts = np.fromiter((e.ts for e in shown), dtype=np.int64, count=len(shown))
    max_ts = max(e.ts for e in decoded.events)
    return Impressions([e.user_id for e in shown], [e.note_id for e in shown], ts, max_ts)


def build_flow(
    source: Source[RawBatch], sink: Sink[Impressions], dlq: DynamicSink, max_bytes: int
) -> Dataflow:
    """Build the exposure dataflow.

    Args:
        source: raw Kafka batches (`KafkaBatchSource` or a `TestingSource` of `RawBatch`).
        sink: receives `Impressions` (an `ExposureSink` in production).
        dlq: receives the dead letters of undecodable events.
        max_bytes: payload size limit.
    """
    flow = Dataflow("exposure")
    batches = op.input("in", flow, source)
    decoded = decode_with_dlq("events", batches, dlq, "exposure", max_bytes)
    op.output("bloom", op.filter_map("impressions", decoded, impressions_of), sink)
    return flow


class _ExposurePartition(StatelessSinkPartition[Impressions]):
    def __init__(self, redis_url: str, config: ExposureConfig) -> None:
        self._redis = redis.Redis.from_url(redis_url)
        self._writer = ExposureWriter(self._redis, config)

    def write_batch(self, items: list[Impressions]) -> None:
        users = [u for item in items for u in item.users]
        notes = [n for item in items for n in item.notes]
        ts = np.concatenate([item.ts for item in items])
        self._writer.add_batch(users, notes, ts, as_of=max(item.max_ts for item in items))

    def close(self) -> None:
        self._redis.close()


class ExposureSink(DynamicSink[Impressions]):
    """Sets the Bloom bits of every impression, one Redis call per sink batch and worker.

    Args:
        redis_url: the Redis holding the filters.
        config: namespace, retention and sizing (stored in Redis by the first writer).
    """

    def __init__(self, redis_url: str, config: ExposureConfig) -> None:
        self._redis_url, self._config = redis_url, config

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ExposurePartition:
        del step_id, worker_index, worker_count
        return _ExposurePartition(self._redis_url, self._config)
