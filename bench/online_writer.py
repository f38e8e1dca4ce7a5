"""Rows/s of the fast online writer vs Feast's own `store.push()`, same rows, same run.

Run: `.venv/bin/python -m bench.online_writer [--rows N] [--push-rows N] [--reps R]`.
Measured twice in one run: on the configured Redis (REDIS_URL, else redis://127.0.0.1:6379; DB 14,
a project of its own, cleaned up) and on a redis-server the bench starts with
`infra.stack.REDIS_TUNING` (hash tables instead of listpacks for the 85-field feature hashes).
The writer is pipelined as the stats job's sink uses it: the next chunk is encoded while Redis
applies the previous one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
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
from infra.stack import REDIS_TUNING, free_port, redis_answers

console = Console()


def columns(view: str, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random but realistic feature columns."""
    return {
        name: rng.integers(0, 5_000, rows) if kind == "int64" else rng.random(rows)
        for name, kind in feature_types(view).items()
    }


def _private_redis() -> tuple[subprocess.Popen, str]:
    """A redis-server of the bench's own with `infra.stack.REDIS_TUNING`, on a free port."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", *REDIS_TUNING],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/14"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("the bench's own redis-server did not start")
        time.sleep(0.05)
    return proc, url


def measure(url: str, rows: int, push_rows: int, reps: int, chunk: int) -> dict[str, float]:
    """push rows/s, writer rows/s (median of `reps`) and bytes per key, on the Redis at `url`."""
    client = redis.Redis.from_url(url)
    project = f"bench{uuid.uuid4().hex[:6]}"
    view = "note_stats"
    rng = np.random.default_rng(0)
    ids = [f"n{i}" for i in range(rows)]
    cols = columns(view, rows, rng)
    ts = 1_767_225_600_000
    try:
        with tempfile.TemporaryDirectory() as tmp:
            store = feature_store(url, project, Path(tmp))
            apply_definitions(store, Path(tmp))
            writer = OnlineWriter(client, project)
            frame = pd.DataFrame(
                {
                    ENTITY_KEY[view]: ids[:push_rows],
                    "event_ts": pd.Timestamp(ts, unit="ms", tz="UTC"),
                    "created": pd.Timestamp(ts, unit="ms", tz="UTC"),  # the log's tie-breaker
                    **{k: v[:push_rows] for k, v in cols.items()},
                }
            )
            push_rates, writer_rates = [], []
            for rep in range(reps):
                start = time.perf_counter()
                store.push(f"{view}_push", frame)
                push_rates.append(push_rows / (time.perf_counter() - start))
                # As the stats job's sink does: the next rows are encoded while Redis applies
                # the previous ones; one round trip per chunk.
                start = time.perf_counter()
                for lo in range(0, rows, chunk):
                    part = {k: v[lo : lo + chunk] for k, v in cols.items()}
                    payload = writer.encode(view, ids[lo : lo + chunk], part, ts + 1 + rep)
                    writer.collect()
                    writer.send_encoded(payload, len(ids[lo : lo + chunk]))
                writer.collect()
                writer_rates.append(rows / (time.perf_counter() - start))
            sample = [writer.redis_key(view, i) for i in ids[:200]]
            key_bytes = median([float(client.memory_usage(k) or 0) for k in sample])
            encoding = client.object("encoding", sample[0])
            writer.close()
    finally:
        client.flushdb()
        client.close()
    return {
        "push": median(push_rates),
        "writer": median(writer_rates),
        "key_bytes": key_bytes,
        "encoding": encoding.decode() if encoding else "?",
    }


def main(rows: int = 100_000, push_rows: int = 10_000, reps: int = 3, chunk: int = 5_000) -> None:
    """Measure and print the figures on the configured Redis and on a tuned one of its own."""
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0]
    targets = [("configured Redis", f"{base}/14", None)]
    if shutil.which("redis-server"):
        proc, url = _private_redis()
        targets.append((f"Redis with {' '.join(REDIS_TUNING).lstrip('-')}", url, proc))
    results = {}
    try:
        for name, url, _ in track(targets, description="push vs writer", console=console):
            results[name] = measure(url, rows, push_rows, reps, chunk)
    finally:
        for _, _, proc in targets:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
    view = "note_stats"
    n = len(feature_types(view))
    console.print(f"view {view}: {n} features per row; medians of {reps}")
    for name, r in results.items():
        console.print(
            f"[bold]{name}[/bold] (hash encoding {r['encoding']}, {r['key_bytes']:,.0f} B/key)"
        )
        console.print(f"  Feast store.push()     {r['push']:,.0f} rows/s  ({push_rows:,} rows)")
        console.print(
            f"  OnlineWriter           {r['writer']:,.0f} rows/s  "
            f"({rows:,} rows, {chunk:,} per call)"
        )
        console.print(f"  ratio writer / push    {r['writer'] / r['push']:.1f}x  (target >= 10x)")


if __name__ == "__main__":
    typer.run(main)
