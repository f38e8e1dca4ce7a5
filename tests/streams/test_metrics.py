"""The jobs' metrics (streams.metrics): what the source, the ingest step and the sinks report,
the offsets committed to the job's consumer group at snapshots, and the endpoint's text."""

from __future__ import annotations

import urllib.request
import uuid
from collections import Counter

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from msgspec.structs import replace

from streams import metrics
from streams.config import EventLimits
from streams.events import encode_event
from streams.ingest import ingest_flow
from streams.kafka_io import KafkaBatchSource, RawBatch, group_id, make_producer, read_to_end
from streams.replay import replay
from streams.sinks import CallbackSink, metered
from streams.sources import ListSource
from streams.validate import build_flow
from tests.infra.promtool import check_metrics
from tests.streams.helpers import create_topics, make_event

PARTITIONS = range(4)


def value(name: str, **labels: str) -> float:
    """A sample of the jobs' registry (0 if it does not exist yet)."""
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The consumer group's committed offset of each partition of `topic` (-1001: none)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = [TopicPartition(topic, p) for p in PARTITIONS]
    future = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, wanted)])
    listed = future[group].result(15)
    return {tp.partition: tp.offset for tp in listed.topic_partitions}


def test_a_bounded_run_reports_its_progress_and_commits_it(bootstrap: str, topic_name: str):
    create_topics(bootstrap, topic_name)
    events = [make_event("click", i) for i in range(600)]
    replay(ListSource(events, 100), bootstrap, topic_name)
    producer = make_producer(bootstrap)
    producer.produce(topic_name, b"not json", b"u1")
    assert producer.flush(10) == 0
    ends: Counter = Counter()
    for batch in read_to_end(bootstrap, topic_name):
        for record in batch:
            ends[record.partition] = max(ends[record.partition], record.offset + 1)
    assert sum(ends.values()) == 601

    job = f"test{uuid.uuid4().hex[:8]}"  # a consumer group of its own
    before_in = {p: value("streamrec_job_events_in_total", flow="validate", partition=str(p))
                 for p in PARTITIONS}  # fmt: skip
    before_out = sum(
        value("streamrec_job_events_out_total", flow="validate", partition=str(p))
        for p in PARTITIONS
    )
    before_dead = value("streamrec_job_dead_letters_total", flow="validate", reason="not_json")
    dlq = metered(KafkaSink([bootstrap], f"{topic_name}.dlq"), job, "dlq", "kafka")
    source = KafkaBatchSource(bootstrap, topic_name, tail=False, job=job)
    run_main(build_flow(source, CallbackSink(lambda _: None), dlq))

    # the group's offsets are the job's positions: every partition read to its end
    assert committed(bootstrap, group_id(job), topic_name) == {p: ends[p] for p in PARTITIONS}
    for p in PARTITIONS:
        where = {"flow": job, "topic": topic_name, "partition": str(p)}
        assert value("streamrec_job_consumer_position", **where) == ends[p]
        assert value("streamrec_job_committed_offset", **where) == ends[p]
        assert value("streamrec_job_log_end_offset", **where) == ends[p]
        assert value("streamrec_job_consumer_lag", **where) == 0
        assert value("streamrec_job_last_snapshot_timestamp_seconds", **where) > 0
        read = value("streamrec_job_events_in_total", flow="validate", partition=str(p))
        assert read - before_in[p] == ends[p]
    assert value("streamrec_job_offset_commit_errors_total", flow=job) == 0
    out = sum(
        value("streamrec_job_events_out_total", flow="validate", partition=str(p))
        for p in PARTITIONS
    )
    assert out - before_out == 600
    dead = value("streamrec_job_dead_letters_total", flow="validate", reason="not_json")
    assert dead - before_dead == 1
    assert value("streamrec_job_sink_items_total", flow=job, sink="dlq") == 1
    assert value("streamrec_job_sink_write_seconds_count", flow=job, sink="dlq", store="kafka") == 1
    assert value("streamrec_job_last_flush_timestamp_seconds", flow=job, sink="dlq") > 0
    watermarks = [
        value("streamrec_job_event_time_watermark_seconds", flow="validate", partition=str(p))
        for p in PARTITIONS
    ]
    assert max(watermarks) == max(e.ts for e in events) / 1000


def test_late_events_and_the_clock_are_counted_per_batch():
    flow = f"late{uuid.uuid4().hex[:8]}"
    t0 = 1_700_000_000_000
    in_order = [replace(make_event("click", i), ts=t0 + 60_000 + i) for i in range(10)]
    late = replace(make_event("click", 99), ts=t0)
    batches = [
        RawBatch("t", 0, [None] * 10, [encode_event(e) for e in in_order], list(range(10))),
        RawBatch("t", 0, [None, None], [encode_event(late), b"{"], [10, 11]),
    ]
    dead: list = []
    dataflow, parts = ingest_flow(
        flow,
        TestingSource(batches),
        TestingSink(dead),
        limits=EventLimits(confirm_events=1),
        lateness_ms=1_000,
        shard=lambda cols, _hwm: [("k", len(cols.events))] if len(cols.events) else [],
        recoverable=False,
    )
    op.output("out", parts, TestingSink([]))
    run_main(dataflow)
    assert len(dead) == 2
    assert value("streamrec_job_events_in_total", flow=flow, partition="0") == 12
    assert value("streamrec_job_events_out_total", flow=flow, partition="0") == 10
    assert value("streamrec_job_late_events_total", flow=flow, partition="0") == 1
    assert value("streamrec_job_dead_letters_total", flow=flow, reason="late") == 1
    assert value("streamrec_job_dead_letters_total", flow=flow, reason="not_json") == 1
    assert value("streamrec_job_event_time_watermark_seconds", flow=flow, partition="0") == (
        (t0 + 60_009) / 1000
    )


def test_metered_sinks_count_time_and_pass_state_through():
    flow = f"sink{uuid.uuid4().hex[:8]}"
    out: list = []
    sink = metered(TestingSink(out), flow, "memory", "memory")
    assert sink.__class__.__name__ == "_MeteredDynamic"
    dataflow = Dataflow(flow)
    op.output("out", op.input("in", dataflow, TestingSource(list(range(7)))), sink)
    run_main(dataflow)
    assert out == list(range(7))
    assert value("streamrec_job_sink_items_total", flow=flow, sink="memory") == 7
    count = value(
        "streamrec_job_sink_write_seconds_count", flow=flow, sink="memory", store="memory"
    )
    assert count >= 1
    assert value("streamrec_job_last_flush_age_seconds", flow=flow, sink="memory") >= 0


def test_the_endpoint_serves_text_promtool_accepts():
    server = metrics.serve(0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as r:
            text = r.read()
    finally:
        server.shutdown()
    assert b"# TYPE streamrec_job_events_in_total counter" in text
    assert b"# TYPE streamrec_job_sink_write_seconds histogram" in text
    check_metrics(text)
