"""The stats job's output: derived features into Feast's Redis online store and an offline log.

Each `StatsFlush` becomes one pipelined write of Feast's own online format (`OnlineWriter`).
Redis's replies are read as they arrive, without waiting for them (the worker would otherwise
sit idle while Redis applies a batch), up to `MAX_UNREAD` outstanding replies per partition and
at every epoch snapshot, where all of them are read. The flow's event-time high-water mark is
kept at `<project>:hwm:stats` in Redis, sent after the values on the same connection, so readers
know the time the values are valid as of. The flushes' offline-log rows (`LogRows`, one per
entity and change time, docs/stats.md) are appended, in parquet part files, to the offline log
that the feature views' batch sources read (point-in-time training data, `feast materialize`),
by one `OfflineLogWriter` per process: a thread of its own writes a part of every shard's rows
about every second.

The sink has one partition per stats shard (`u0`.., `n0`..), so Bytewax calls each partition's
`snapshot` at every epoch: there the offline rows appended so far are made durable (most are
written already: the snapshot waits for the last second's part at most) and Redis's replies
collected, before the epoch - and the Kafka offsets with it - is committed. After a crash, the
rows of the epochs after the last commit are emitted again: the online store gets the same
aggregates again, the offline log may hold a row twice (identical values and event time,
harmless to point-in-time joins), and nothing is lost.

Each write is measured (`streams.metrics`, flow `stats`, sink `online`, store `redis`): entities
written (`streamrec_job_sink_items_total`), the write's wall time - reading the replies that
arrived and pipelining this batch - (`streamrec_job_sink_write_seconds`) and its time.
"""

from __future__ import annotations

import time
from pathlib import Path

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from features.client import mark_key
from features.offline_log import OfflineLogWriter
from features.online_writer import OnlineWriter
from features.redis_conn import connect
from features.schema import FeatureConfig, derive
from streams import metrics
from streams.pacing import PACER
from streams.retry import TRANSIENT, with_retry
from streams.stats import StatsFlush, shard_keys

MAX_UNREAD = 20_000
"""Replies a partition leaves unread before it waits for Redis (backpressure)."""


SINK = "online"
"""The `sink` label of the online store's writes."""


class _Partition(StatefulSinkPartition[StatsFlush, None]):
    def __init__(
        self,
        redis_url: str,
        project: str,
        config: FeatureConfig,
        offline: OfflineLogWriter | None,
        flow: str,
        durable: bool,
    ) -> None:
        self._redis = connect(redis_url)
        self._durable = durable
        self._writer = OnlineWriter(self._redis, project)
        self._config = config
        self._hwm_key = mark_key(project, "stats")
        self._offline = offline
        self._unacked: list[StatsFlush] = []
        """Flushes sent whose replies are not read yet (sent again if Redis failed them)."""
        self._flow = flow
        self._rows = metrics.SINK_ITEMS.labels(flow, SINK)
        self._seconds = metrics.WRITE_SECONDS.labels(flow, SINK, "redis")

    def write_batch(self, items: list[StatsFlush]) -> None:
        start = time.perf_counter()
        for flush in items:
            if self._offline is not None and flush.log is not None:
                log = flush.log
                self._offline.append(flush.view, log.ids, log.counts, log.ts, log.created_ms)
        try:
            # The replies that arrived are read; Redis applies the rest meanwhile.
            if self._writer.poll() > MAX_UNREAD:
                self._writer.collect()
            if not self._writer.unread:
                self._unacked = []
            self._send(items)
            self._unacked += items
        except TRANSIENT:
            lost, self._unacked = self._unacked + list(items), []
            with_retry(lambda: self._write_now(lost), "stats sink")
        took = time.perf_counter() - start
        PACER.record(took)
        self._seconds.observe(took)
        self._rows.inc(sum(len(flush.ids) for flush in items))
        metrics.flushed(self._flow, SINK)

    def _send(self, items: list[StatsFlush]) -> None:
        """Pipeline the rows of `items` and the mark (replies read as they arrive)."""
        hwm = 0
        for flush in items:
            columns = derive(flush.view, flush.counts, self._config)
            self._writer.send(flush.view, flush.ids, columns, flush.as_of_ms)
            hwm = max(hwm, flush.as_of_ms)
        if hwm:
            # Same connection, after the values: whoever sees the mark sees the values.
            self._writer.send_command("EVAL", _MAX_SCRIPT, 1, self._hwm_key, hwm)

    def _write_now(self, items: list[StatsFlush]) -> None:
        """Send `items` and wait for Redis to apply them (aggregates: sending again is safe)."""
        self._send(items)
        self._writer.collect()

    def snapshot(self) -> None:
        """Make everything written so far durable before Bytewax commits the epoch (without a
        recovery store nothing is committed: a restart re-reads the topic from its start)."""
        if self._durable:
            self._settle()

    def _settle(self) -> None:
        """Wait until Redis has applied every write and the offline rows are on disk."""
        try:
            self._writer.collect()
        except TRANSIENT:
            lost, self._unacked = self._unacked, []
            with_retry(lambda: self._write_now(lost), "stats sink")
        self._unacked = []
        if self._offline is not None:
            self._offline.sync()

    def close(self) -> None:
        self._settle()
        self._writer.close()
        self._redis.close()


_MAX_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


class FeastOnlineSink(FixedPartitionedSink[StatsFlush, None]):
    """Writes stats flushes to Feast's online store (and, optionally, the offline log).

    Items are `(shard key, StatsFlush)`; the partitions are the stats shards; `flow` labels
    the write metrics. `durable`: the flow has a recovery store, so each epoch snapshot waits
    until Redis has applied the writes and the offline rows are on disk before Bytewax commits
    the epoch; without one, nothing is committed (a restart re-reads the topic from its start)
    and the snapshot does not wait.
    """

    def __init__(
        self,
        redis_url: str,
        project: str,
        shards: int,
        config: FeatureConfig | None = None,
        offline: Path | None = None,
        flow: str = "stats",
        durable: bool = True,
    ) -> None:
        config = config or FeatureConfig()
        log = None if offline is None else OfflineLogWriter(offline, config)
        self._args = (redis_url, project, config, log, flow, durable)
        self._parts = shard_keys(shards)

    def list_parts(self) -> list[str]:
        return self._parts

    def part_fn(self, item_key: str) -> int:
        return self._parts.index(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Partition:
        del step_id, for_part, resume_state  # writes are idempotent: nothing to resume
        return _Partition(*self._args)
