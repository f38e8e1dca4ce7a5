"""Prometheus metrics of the stream jobs: one registry per process, served over HTTP by `serve`.

The few choke points of every job update them: the source's partitions (`streams.kafka_io`:
position, log end, lag, committed offset), the ingest step (`streams.ingest`: events in and out,
dead letters by reason, late events, event-time watermark) and the sinks (`streams.sinks.metered`,
`streams.online_sink`: items written, write latency, last flush). Every update is made once per
batch, never per event, and costs a dict lookup and a lock: the hot path stays as it was.

Every series carries `flow` (the job: `stats`, `exposure`, `samples`, `validate`), never `job`,
which Prometheus sets itself from its scrape configuration. docs/operations.md ("Metrics and
alerts") lists them all; `infra/monitoring/rules.yml` has the rules over them.

Usage (the deployed jobs do this in `infra.jobs` when a metrics port is set)::

    from streams import metrics

    server = metrics.serve(9200)  # http://127.0.0.1:9200/metrics
    ...
    server.shutdown()
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry(auto_describe=True)
"""The registry of this process's job metrics (not prometheus_client's global one, which other
libraries fill). Importing Feast's metrics module switches prometheus_client to multiprocess
mode (values kept in mmap files of a temporary directory); the series here read their values
the same way in either mode, and each process serves only its own."""

WRITE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
"""Buckets of the write latency histogram (seconds): a pipelined Redis write takes 1-50 ms."""

EVENTS_IN = Counter(
    "streamrec_job_events_in",
    "Messages the ingest step received from its Kafka partition (valid or not)",
    ["flow", "partition"],
    registry=REGISTRY,
)
EVENTS_OUT = Counter(
    "streamrec_job_events_out",
    "Events the ingest step admitted into the flow (valid, not late, not duplicate)",
    ["flow", "partition"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "streamrec_job_dead_letters",
    "Dead letters by reason (the decoder's and the ingest step's: late, future, outlier, ...)",
    ["flow", "reason"],
    registry=REGISTRY,
)
LATE = Counter(
    "streamrec_job_late_events",
    "Events older than the partition's event-time high-water mark minus the allowed lateness "
    "(dead-lettered as late)",
    ["flow", "partition"],
    registry=REGISTRY,
)
WATERMARK = Gauge(
    "streamrec_job_event_time_watermark_seconds",
    "Event-time high-water mark of the partition (Unix seconds of the newest admitted event)",
    ["flow", "partition"],
    registry=REGISTRY,
)
POSITION = Gauge(
    "streamrec_job_consumer_position",
    "Next offset the source reads in the partition",
    ["flow", "topic", "partition"],
    registry=REGISTRY,
)
LOG_END = Gauge(
    "streamrec_job_log_end_offset",
    "The partition's log end offset (high watermark) as the broker last reported it",
    ["flow", "topic", "partition"],
    registry=REGISTRY,
)
LAG = Gauge(
    "streamrec_job_consumer_lag",
    "Log end offset minus the source's position (messages not read yet; updated at most once "
    "a second)",
    ["flow", "topic", "partition"],
    registry=REGISTRY,
)
COMMITTED = Gauge(
    "streamrec_job_committed_offset",
    "Offset committed to the job's consumer group at the source's last snapshot",
    ["flow", "topic", "partition"],
    registry=REGISTRY,
)
COMMIT_ERRORS = Counter(
    "streamrec_job_offset_commit_errors",
    "Offset commits to the consumer group the broker refused or that failed",
    ["flow"],
    registry=REGISTRY,
)
SINK_ITEMS = Counter(
    "streamrec_job_sink_items",
    "Items a sink wrote (a stats flush, a batch of impressions, a message, a dead letter)",
    ["flow", "sink"],
    registry=REGISTRY,
)
WRITE_SECONDS = Histogram(
    "streamrec_job_sink_write_seconds",
    "Wall time of one sink write (a batch of items); store=redis is the Redis write latency",
    ["flow", "sink", "store"],
    buckets=WRITE_BUCKETS,
    registry=REGISTRY,
)

_flushes: dict[tuple[str, str], float] = {}
_snapshots: dict[tuple[str, str, str], float] = {}


def flushed(flow: str, sink: str, at: float | None = None) -> None:
    """Record that `sink` of `flow` wrote a batch now (or at Unix time `at`)."""
    _flushes[(flow, sink)] = time.time() if at is None else at


def snapshotted(flow: str, topic: str, partition: int, at: float | None = None) -> None:
    """Record that the source partition of `flow` was snapshotted (an epoch ended) now."""
    _snapshots[(flow, topic, str(partition))] = time.time() if at is None else at


class _Ages(Collector):
    """Timestamps and ages (computed at scrape time) of the last flush and the last snapshot."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        flushes, snapshots = dict(_flushes), dict(_snapshots)  # copies are atomic (GIL)
        stamp = GaugeMetricFamily(
            "streamrec_job_last_flush_timestamp_seconds",
            "Unix time of the sink's last write",
            labels=["flow", "sink"],
        )
        age = GaugeMetricFamily(
            "streamrec_job_last_flush_age_seconds",
            "Seconds since the sink's last write (at scrape time)",
            labels=["flow", "sink"],
        )
        for (flow, sink), at in sorted(flushes.items()):
            stamp.add_metric([flow, sink], at)
            age.add_metric([flow, sink], now - at)
        snap = GaugeMetricFamily(
            "streamrec_job_last_snapshot_timestamp_seconds",
            "Unix time of the source partition's last snapshot (the end of an epoch, when its "
            "offset is committed to the consumer group)",
            labels=["flow", "topic", "partition"],
        )
        for labels, at in sorted(snapshots.items()):
            snap.add_metric(list(labels), at)
        yield from (stamp, age, snap)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


REGISTRY.register(_Ages())


class MetricsServer:
    """The HTTP endpoint of this process's job metrics (`/metrics`, any path in fact)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server, self._thread = server, thread

    @property
    def port(self) -> int:
        """The port it listens on (the one asked for, or the one chosen for port 0)."""
        return self._server.server_address[1]

    def shutdown(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve(
    port: int, host: str = "127.0.0.1", registry: CollectorRegistry = REGISTRY
) -> MetricsServer:
    """Serve `registry` (default: the jobs' `REGISTRY`) at `http://host:port/metrics` from a
    daemon thread.

    Raises:
        OSError: the port cannot be bound (in use, or not allowed).
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread)


def exposition() -> bytes:
    """What the endpoint serves now (the Prometheus text format)."""
    from prometheus_client import generate_latest

    return generate_latest(REGISTRY)
