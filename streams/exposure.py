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
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from features.exposure import ExposureConfig, ExposureWriter
from features.redis_conn import connect
from features.windows import TYPE_METRIC
from streams.config import DEFAULT_LIMITS, EventLimits
from streams.ingest import Columns, ingest_flow
from streams.kafka_io import RawBatch
from streams.retry import with_retry


@dataclass(frozen=True, slots=True)
class Impressions:
    """The impressions of one batch, as columns, and the batch's largest event time."""

    users: list[str]
    notes: list[str]
    ts: np.ndarray
    max_ts: int


def impressions_of(cols: Columns, hwm: int | None) -> list[tuple[str, Impressions]]:
    """The impressions of a batch's events (none when it has no valid event at all).

    A batch without impressions still moves the flow's event-time clock (`max_ts`, the
    partition's high-water mark).
    """
    if not len(cols.ts) or hwm is None:
        return []
    shown = np.flatnonzero(cols.kind == TYPE_METRIC["impression"]).tolist()
    part = Impressions(
        [cols.users[i] for i in shown], [cols.notes[i] for i in shown], cols.ts[shown], hwm
    )
    return [(str(cols.partition), part)]


def build_flow(
    source: Source[RawBatch],
    sink: Sink[Impressions],
    dlq: DynamicSink,
    limits: EventLimits = DEFAULT_LIMITS,
) -> Dataflow:
    """Build the exposure dataflow.

    Args:
        source: raw Kafka batches (`KafkaBatchSource` or a `TestingSource` of `RawBatch`).
        sink: receives `Impressions` (an `ExposureSink` in production).
        dlq: receives the dead letters of undecodable events.
        limits: event decoding limits.
    """
    flow, parts = ingest_flow(
        "exposure", source, dlq, limits=limits, lateness_ms=None, shard=impressions_of
    )
    op.output("bloom", op.key_rm("impressions", parts), sink)
    return flow


class _ExposurePartition(StatelessSinkPartition[Impressions]):
    def __init__(self, redis_url: str, config: ExposureConfig) -> None:
        self._redis = connect(redis_url)
        self._writer = with_retry(
            lambda: ExposureWriter(self._redis, config), "exposure sink (layout)"
        )

    def write_batch(self, items: list[Impressions]) -> None:
        users = [u for item in items for u in item.users]
        notes = [n for item in items for n in item.notes]
        ts = np.concatenate([item.ts for item in items])
        as_of = max(item.max_ts for item in items)
        # Setting bits is idempotent: a batch whose call failed half way is simply sent again.
        with_retry(lambda: self._writer.add_batch(users, notes, ts, as_of=as_of), "exposure sink")

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
