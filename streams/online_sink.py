"""The stats job's output: derived features into Feast's Redis online store and an offline log.

Each `StatsFlush` becomes one pipelined write of Feast's own online format (`OnlineWriter`);
the flow's event-time high-water mark is kept at `<project>:hwm:stats` in Redis so readers
know the time the values are valid as of. Rows are also appended, in parquet part files, to the
offline log that the feature views' batch sources read (point-in-time training data).
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from features.online_writer import OnlineWriter
from features.schema import FeatureConfig, derive
from streams.pacing import PACER
from streams.stats import StatsFlush

OFFLINE_ROWS = 50_000


def hwm_key(project: str, job: str) -> str:
    """Redis key holding a job's event-time high-water mark (epoch ms)."""
    return f"{project}:hwm:{job}"


class _Partition(StatelessSinkPartition[StatsFlush]):
    def __init__(
        self, redis_url: str, project: str, config: FeatureConfig, offline_dir: Path | None
    ) -> None:
        self._redis = redis.Redis.from_url(redis_url)
        self._writer = OnlineWriter(self._redis, project)
        self._config = config
        self._hwm_key = hwm_key(project, "stats")
        self._offline_dir = offline_dir
        self._pending: dict[str, list[pa.Table]] = {}
        self._pending_rows = 0

    def write_batch(self, items: list[StatsFlush]) -> None:
        start = time.perf_counter()
        hwm = 0
        for flush in items:
            columns = derive(flush.view, flush.counts, self._config)
            self._writer.write(flush.view, flush.ids, columns, flush.as_of_ms)
            hwm = max(hwm, flush.as_of_ms)
            if self._offline_dir is not None:
                self._log(flush, columns)
        if hwm:
            self._redis.eval(_MAX_SCRIPT, 1, self._hwm_key, hwm)
        PACER.record(time.perf_counter() - start)

    def _log(self, flush: StatsFlush, columns: dict) -> None:
        key = "user_id" if flush.view == "user_stats" else "note_id"
        table = pa.table(
            {
                key: flush.ids,
                "event_ts": pa.array(
                    [flush.as_of_ms] * len(flush.ids), pa.timestamp("ms", tz="UTC")
                ),
                **columns,
            }
        )
        self._pending.setdefault(flush.view, []).append(table)
        self._pending_rows += len(flush.ids)
        if self._pending_rows >= OFFLINE_ROWS:
            self._write_offline()

    def _write_offline(self) -> None:
        for view, tables in self._pending.items():
            directory = self._offline_dir / view
            directory.mkdir(parents=True, exist_ok=True)
            name = f"part-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
            tmp = directory / f".{name}.tmp"
            pq.write_table(pa.concat_tables(tables), tmp)
            os.replace(tmp, directory / name)
        self._pending.clear()
        self._pending_rows = 0

    def close(self) -> None:
        if self._pending:
            self._write_offline()
        self._redis.close()


_MAX_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


class FeastOnlineSink(DynamicSink[StatsFlush]):
    """Writes stats flushes to Feast's online store (and, optionally, the offline log)."""

    def __init__(
        self,
        redis_url: str,
        project: str,
        config: FeatureConfig | None = None,
        offline_dir: Path | None = None,
    ) -> None:
        self._args = (redis_url, project, config or FeatureConfig(), offline_dir)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        del step_id, worker_index, worker_count
        return _Partition(*self._args)
