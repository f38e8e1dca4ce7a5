"""The `validate` job: audit a topic, route invalid events to the DLQ and count the valid ones.

It is the smallest flow built on the shared ingest step and what `streamrec run validate`
deploys; its sink receives one (partition, counts by event type) item per decoded batch.
"""

from __future__ import annotations

from collections import Counter

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import DynamicSink, Sink

from streams.config import DEFAULT_LIMITS, EventLimits
from streams.ingest import ingest_flow
from streams.kafka_io import RawBatch


def build_flow(
    source: Source[RawBatch],
    sink: Sink[tuple[int, Counter]],
    dlq: DynamicSink,
    limits: EventLimits = DEFAULT_LIMITS,
) -> Dataflow:
    """Build the validate dataflow.

    Args:
        source: raw Kafka batches (`KafkaBatchSource` or a `TestingSource` of `RawBatch`).
        sink: receives (partition, Counter of event types) per batch.
        dlq: receives the dead letters (a `KafkaSink` on `interactions.dlq`).
        limits: event decoding limits.
    """
    flow, counts = ingest_flow(
        "validate",
        source,
        dlq,
        limits=limits,
        lateness_ms=None,
        shard=lambda cols, _hwm: [(cols.partition, Counter(e.type for e in cols.events))],
    )
    op.output("out", counts, sink)
    return flow
