"""The offline log of the feature views: parquet parts that the views' batch sources read.

A row holds an entity's features from its `event_ts` on, until the entity's next row (the stats
job writes one at every change: docs/stats.md); `created` (the time the row was made) orders two
rows of one entity and `event_ts`, the later winning - the views' `created_timestamp_column`.
A part is written aside, fsynced and renamed into `<offline>/<view>/part-*.parquet`, so a reader
(`get_historical_features`, `feast materialize`) sees it whole or not at all.

`OfflineLogWriter` is how a job appends: rows are buffered as window counts and written by a
thread of its own about every second (derived, tabled and written there), so a caller that
must make its rows durable (`sync`, at a checkpoint) waits for the last second's part at most,
not for every row since the previous checkpoint.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.schema import ENTITY_KEY, FeatureConfig, derive

EVENT_TS, CREATED = "event_ts", "created"
"""The log's event-time column (the views' `timestamp_field`) and its created-time column."""


def offline_rows(
    view: str,
    entity_ids: Sequence[str],
    columns: Mapping[str, np.ndarray],
    event_ts_ms: int | np.ndarray,
    created_ms: int | np.ndarray,
) -> pa.Table:
    """Rows of `view` for the log: the entity key, `event_ts` and `created` (each one time, or
    one per row) and every feature column."""
    n = len(entity_ids)
    ts = np.broadcast_to(np.asarray(event_ts_ms, dtype=np.int64), (n,))
    created = np.broadcast_to(np.asarray(created_ms, dtype=np.int64), (n,))
    return pa.table(
        {
            ENTITY_KEY[view]: list(entity_ids),
            EVENT_TS: pa.array(ts, pa.timestamp("ms", tz="UTC")),
            CREATED: pa.array(created, pa.timestamp("ms", tz="UTC")),
            **columns,
        }
    )


def write_offline_parts(offline: Path, pending: Mapping[str, Sequence[pa.Table]]) -> None:
    """Append one part file per view holding `pending[view]`'s rows."""
    for view, tables in pending.items():
        directory = offline / view
        directory.mkdir(parents=True, exist_ok=True)
        name = f"part-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = directory / f".{name}.tmp"
        pq.write_table(pa.concat_tables(tables), tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, directory / name)


class OfflineLogWriter:
    """Appends window counts of the views to the offline log as derived feature rows, writing
    parts from a thread of its own about every `part_seconds` (or `part_rows` rows).

    Thread-safe: the stats sink's partitions of one process share one writer, so a part holds
    the rows of every shard, and a checkpoint (`sync`) finds most of them written already.
    """

    def __init__(
        self,
        offline: Path,
        config: FeatureConfig,
        part_seconds: float = 1.0,
        part_rows: int = 50_000,
    ) -> None:
        self._offline, self._config = offline, config
        self._part_seconds, self._part_rows = part_seconds, part_rows
        self._lock = threading.Lock()
        self._buffer: dict[str, list[tuple[Sequence[str], np.ndarray, dict, np.ndarray]]] = {}
        self._rows = 0
        self._since = 0.0
        self._writing: list[Future] = []
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offline-log")

    def append(
        self,
        view: str,
        entity_ids: Sequence[str],
        counts: Mapping[str, np.ndarray],
        event_ts_ms: np.ndarray,
        created_ms: int,
    ) -> None:
        """Buffer rows of `view`: entity `entity_ids[i]`'s window counts (`derive`'s input) from
        event time `event_ts_ms[i]` on; written within about `part_seconds`."""
        n = len(entity_ids)
        if not n:
            return
        created = np.full(n, created_ms, np.int64)
        with self._lock:
            if not self._rows:
                self._since = time.monotonic()
            self._buffer.setdefault(view, []).append((entity_ids, event_ts_ms, counts, created))
            self._rows += n
            if (
                self._rows >= self._part_rows
                or time.monotonic() - self._since >= self._part_seconds
            ):
                self._submit()

    def _submit(self) -> None:
        """Hand the buffered rows to the thread (called holding the lock)."""
        if not self._rows:
            return
        buffer, self._buffer, self._rows = self._buffer, {}, 0
        self._writing = [f for f in self._writing if not f.done() or f.exception() is not None]
        self._writing.append(self._thread.submit(self._write, buffer))

    def _write(self, buffer: dict) -> None:
        tables = {}
        for view, chunks in buffer.items():
            ids = [i for chunk in chunks for i in chunk[0]]
            ts = np.concatenate([chunk[1] for chunk in chunks])
            counts = {w: np.concatenate([chunk[2][w] for chunk in chunks]) for w in chunks[0][2]}
            created = np.concatenate([chunk[3] for chunk in chunks])
            columns = derive(view, counts, self._config)
            tables[view] = [offline_rows(view, ids, columns, ts, created)]
        write_offline_parts(self._offline, tables)

    def sync(self) -> None:
        """Return once every row appended so far is in a part on disk (raises what a write
        raised)."""
        with self._lock:
            self._submit()
            writing = list(self._writing)
        for done in writing:
            done.result()
        with self._lock:
            self._writing = [f for f in self._writing if f not in writing]
