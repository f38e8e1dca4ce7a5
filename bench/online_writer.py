"""Rows/s of the fast online writer vs Feast's own `store.push()`, same rows, same run.

Run: `.venv/bin/python -m bench.online_writer [--rows N] [--push-rows N] [--reps R]`.
Redis: REDIS_URL if set, else redis://127.0.0.1:6379; DB 14, a project of its own, cleaned up.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import redis
import typer
from rich.console import Console
from rich.progress import track

from bench.common import median
from features.online_writer import OnlineWriter
from features.schema import ENTITY_KEY, feature_types
from features.store import apply_definitions, feature_store

console = Console()


def columns(view: str, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random but realistic feature columns."""
    return {
        name: rng.integers(0, 5_000, rows) if kind == "int64" else rng.random(rows)
        for name, kind in feature_types(view).items()
    }


def main(rows: int = 100_000, push_rows: int = 10_000, reps: int = 3, chunk: int = 5_000) -> None:
    """Measure and print the figures."""
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0]
    url = f"{base}/14"
    client = redis.Redis.from_url(url)
    project = f"bench{uuid.uuid4().hex[:6]}"
    view = "note_stats"
    rng = np.random.default_rng(0)
    ids = [f"n{i}" for i in range(rows)]
    cols = columns(view, rows, rng)
    ts = 1_767_225_600_000
    with tempfile.TemporaryDirectory() as tmp:
        store = feature_store(url, project, Path(tmp) / "registry.db")
        apply_definitions(store)
        writer = OnlineWriter(client, project)
        frame = pd.DataFrame(
            {
                ENTITY_KEY[view]: ids[:push_rows],
                "event_ts": pd.Timestamp(ts, unit="ms", tz="UTC"),
                **{k: v[:push_rows] for k, v in cols.items()},
            }
        )
        push_rates, writer_rates = [], []
        for _ in track(range(reps), description="push vs writer", console=console):
            start = time.perf_counter()
            store.push(f"{view}_push", frame)
            push_rates.append(push_rows / (time.perf_counter() - start))
            start = time.perf_counter()
            for lo in range(0, rows, chunk):
                part = {k: v[lo : lo + chunk] for k, v in cols.items()}
                writer.write(view, ids[lo : lo + chunk], part, ts + 1)
            writer_rates.append(rows / (time.perf_counter() - start))
    client.flushdb()
    p, w = median(push_rates), median(writer_rates)
    n = len(feature_types(view))
    console.print(f"view {view}: {n} features per row; medians of {reps}")
    console.print(f"Feast store.push()     {p:,.0f} rows/s  ({push_rows:,} rows)")
    console.print(f"OnlineWriter           {w:,.0f} rows/s  ({rows:,} rows, {chunk:,} per call)")
    console.print(f"ratio writer / push    {w / p:.1f}x  (target >= 10x)")


if __name__ == "__main__":
    typer.run(main)
