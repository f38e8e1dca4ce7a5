"""The offline log of the feature views: parquet parts that the views' batch sources read.

A row holds an entity's features from its `event_ts` on, until the entity's next row (the stats
job writes one at every change: docs/stats.md); `created` (the time the row was made) orders two
rows of one entity and `event_ts`, the later winning - the views' `created_timestamp_column`.
A part is written aside, fsynced and renamed into `<offline>/<view>/part-*.parquet`, so a reader
(`get_historical_features`, `feast materialize`) sees it whole or not at all.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.schema import ENTITY_KEY

EVENT_TS, CREATED = "event_ts", "created"
"""The log's event-time column (the views' `timestamp_field`) and its created-time column."""


def offline_rows(
    view: str,
    entity_ids: Sequence[str],
    columns: Mapping[str, np.ndarray],
    event_ts_ms: int | np.ndarray,
    created_ms: int,
) -> pa.Table:
    """Rows of `view` for the log: the entity key, `event_ts` (one time, or one per row),
    `created` and every feature column."""
    n = len(entity_ids)
    ts = np.broadcast_to(np.asarray(event_ts_ms, dtype=np.int64), (n,))
    return pa.table(
        {
            ENTITY_KEY[view]: list(entity_ids),
            EVENT_TS: pa.array(ts, pa.timestamp("ms", tz="UTC")),
            CREATED: pa.array(np.full(n, created_ms, np.int64), pa.timestamp("ms", tz="UTC")),
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
