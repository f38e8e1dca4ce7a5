"""The experiment log: per experiment x arm x day x user counts, as parquet parts.

The experiments flow (`streams.experiments`) writes a row per cell whenever the cell changed
and it flushes (every `flush_interval_s`, at the end of a bounded run, and once more when the
cell's day closes); a later row of a cell replaces an earlier one (`read_experiment_log` keeps
the last by `updated_ms`, `seq`). So the log is an upsert log: a re-emitted cell after a restart
replaces itself, and the counts of a day are final once the day closed. Parts are written aside,
fsynced and renamed, so a reader sees a part whole or not at all.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

KEY = ("experiment", "arm", "day", "user_id")
"""What one row counts for; `day` is the UTC day number of the events' time (ts // 1 day)."""
COUNTS = ("impressions", "clicks", "likes", "plays", "watch_ms", "completions")
"""The counters of a cell, in this order. A completion is a play that watched at least
`features.windows.COMPLETION_FRACTION` of a note of known duration."""
SCHEMA = pa.schema(
    [
        ("experiment", pa.string()),
        ("arm", pa.string()),
        ("day", pa.int32()),
        ("user_id", pa.string()),
        *[(c, pa.int64()) for c in COUNTS],
        ("updated_ms", pa.int64()),
        ("seq", pa.int64()),
    ]
)


def write_part(directory: Path, columns: dict[str, list | np.ndarray]) -> Path | None:
    """Append one part holding `columns` (every `SCHEMA` field); None when there are no rows."""
    table = pa.table({f.name: pa.array(columns[f.name], f.type) for f in SCHEMA}, schema=SCHEMA)
    if not table.num_rows:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    name = f"part-{os.getpid()}-{uuid.uuid4().hex[:10]}.parquet"
    tmp = directory / f".{name}.tmp"
    pq.write_table(table, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, directory / name)
    return directory / name


def read_experiment_log(directory: Path, experiment: str | None = None) -> pd.DataFrame:
    """The current row of every cell (of `experiment`, or all), sorted by its key.

    Returns:
        Columns `KEY` + `COUNTS` (empty when nothing was written yet).
    """
    parts = sorted(Path(directory).glob("part-*.parquet")) if Path(directory).exists() else []
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _DTYPES.items()})
    filters = [("experiment", "=", experiment)] if experiment is not None else None
    frame = pq.read_table(parts, schema=SCHEMA, filters=filters).to_pandas()
    frame = frame.sort_values(["updated_ms", "seq"], kind="stable")
    frame = frame.drop_duplicates(list(KEY), keep="last")
    return frame[[*KEY, *COUNTS]].sort_values(list(KEY)).reset_index(drop=True)


_DTYPES = {"experiment": "object", "arm": "object", "day": "int32", "user_id": "object"} | {
    c: "int64" for c in COUNTS
}
