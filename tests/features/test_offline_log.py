"""The offline log's writer: rows appended by several callers are in parts once `sync` returns,
equal to the rows tabled one flush at a time."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.offline_log import CREATED, EVENT_TS, OfflineLogWriter, offline_rows
from features.schema import ENTITY_KEY, FeatureConfig, derive
from features.windows import METRICS, WINDOWS


def _flush(rng: np.random.Generator, view: str, n: int, created: int):
    ids = [f"{view[0]}{i}" for i in rng.choice(50, n, replace=False)]  # one row per id
    ts = rng.integers(1_000, 9_000, n).astype(np.int64)
    counts = {w.name: rng.integers(0, 70_000, (n, len(METRICS))).astype(np.int64) for w in WINDOWS}
    return view, ids, counts, ts, created


def _read(directory: Path) -> pa.Table:
    parts = sorted(directory.glob("part-*.parquet"))
    assert parts, f"no part in {directory}"
    assert not list(directory.glob(".*.tmp")), "a part left aside"
    return pa.concat_tables([pq.read_table(p) for p in parts])


def _sorted(table: pa.Table, key: str) -> pa.Table:
    return table.sort_by([(key, "ascending"), (EVENT_TS, "ascending"), (CREATED, "ascending")])


def test_sync_makes_every_appended_row_durable_and_equal(tmp_path: Path) -> None:
    config = FeatureConfig(prior_strength=7.0)
    rng = np.random.default_rng(3)
    # part_rows small: some parts are handed to the thread before `sync`, some by it.
    writer = OfflineLogWriter(tmp_path, config, part_seconds=math.inf, part_rows=40)
    flushes = [
        _flush(rng, view, int(rng.integers(0, 30)), created)
        for created, view in enumerate(["user_stats", "note_stats"] * 6, start=100)
    ]
    for flush in flushes:
        writer.append(*flush)
    writer.sync()
    for view in ("user_stats", "note_stats"):
        want = pa.concat_tables(
            [
                offline_rows(view, ids, derive(view, counts, config), ts, created)
                for v, ids, counts, ts, created in flushes
                if v == view and ids
            ]
        )
        got = _read(tmp_path / view)
        assert len(list((tmp_path / view).glob("part-*.parquet"))) > 1
        key = ENTITY_KEY[view]
        assert _sorted(got, key).equals(_sorted(want, key))
    writer.sync()  # nothing new: no empty part
    assert sum(len(_read(tmp_path / v)) for v in ("user_stats", "note_stats")) == sum(
        len(f[1]) for f in flushes
    )
