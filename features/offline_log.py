"""The offline log of the feature views: parquet parts that the views' batch sources read.

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


def offline_rows(
    view: str, entity_ids: Sequence[str], columns: Mapping[str, np.ndarray], event_ts_ms: int
) -> pa.Table:
    """Rows of `view` for the log: the entity key, `event_ts` and every feature column."""
    return pa.table(
        {
            ENTITY_KEY[view]: list(entity_ids),
            "event_ts": pa.array([event_ts_ms] * len(entity_ids), pa.timestamp("ms", tz="UTC")),
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
