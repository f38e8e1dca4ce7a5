"""The `validate` job: audit a topic, route invalid events to the DLQ and count the valid ones.

It is the smallest flow built on the shared decode step and what `streamrec run validate`
deploys; its sink receives one (partition, counts by event type) item per decoded batch.
"""

from __future__ import annotations

from collections import Counter

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import DynamicSink, Sink

from streams.decode import decode_with_dlq
from streams.kafka_io import RawBatch


def build_flow(
    source: Source[RawBatch], sink: Sink[tuple[int, Counter]], dlq: DynamicSink, max_bytes: int
) -> Dataflow:
    """Build the validate dataflow.

    Args:
        source: raw Kafka batches (`KafkaBatchSource` or a `TestingSource` of `RawBatch`).
        sink: receives (partition, Counter of event types) per batch.
        dlq: receives the dead letters (a `KafkaSink` on `interactions.dlq`).
        max_bytes: payload size limit.
    """
    flow = Dataflow("validate")
    batches = op.input("in", flow, source)
    decoded = decode_with_dlq("check", batches, dlq, "validate", max_bytes)
    counts = op.map("count", decoded, lambda d: (d.partition, Counter(e.type for e in d.events)))
    op.output("out", counts, sink)
    return flow
