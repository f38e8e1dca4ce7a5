"""Publish and read times of embedding snapshots: a full of 1M x 32 rows and 10k-row deltas.

Run: `.venv/bin/python -m bench.snapshots [--rows N] [--dim D] [--delta-rows N] [--reps R]`.
Deltas: half the rows overwrite existing ids, half are new ids. `refresh` is what a consumer
holding a state does every delta interval (`SnapshotReader.refresh`).
The peer is the floor for the same bytes: `np.save` + fsync of the weight array, and `np.load`.
Files go to a temporary directory on the project's disk (bench/out/), removed at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import track
from rich.table import Table

from bench.common import median
from learners.snapshots import SnapshotConfig, SnapshotReader, SnapshotWriter, TableRows

console = Console()
OUT = Path(__file__).resolve().parent / "out"


def timed(fn: Callable[..., object], *args: object) -> float:
    """Wall seconds of one call of `fn(*args)`."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def dir_bytes(path: Path) -> int:
    """Bytes of the files under `path`."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def raw_save(path: Path, weights: np.ndarray) -> None:
    """The peer: np.save and fsync of the weights alone (no ids, no checksum, no rename)."""
    with open(path, "wb") as f:
        np.save(f, weights)
        f.flush()
        os.fsync(f.fileno())


def main(rows: int = 1_000_000, dim: int = 32, delta_rows: int = 10_000, reps: int = 3) -> None:
    """Measure and print the figures."""
    rng = np.random.default_rng(0)
    ids = [f"u{i}" for i in range(rows)]
    user = TableRows(ids, rng.standard_normal((rows, dim), dtype=np.float32))
    dense = {
        f"layer{k}.weight": rng.standard_normal((256, 256), dtype=np.float32) for k in range(4)
    }
    OUT.mkdir(exist_ok=True)
    figures: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        figures.setdefault(name, []).append(seconds)

    sizes: dict[str, int] = {}
    for rep in track(range(reps), description="snapshot publish/read", console=console):
        tmp = Path(tempfile.mkdtemp(prefix="bench-snapshots-", dir=OUT))
        try:
            writer = SnapshotWriter(tmp, "m", SnapshotConfig(root=tmp, keep_full=2))
            reader = SnapshotReader(tmp, "m")
            add("publish full", timed(writer.publish_full, {"user": user}, dense, 0, {}))
            add("read full (latest)", timed(reader.latest))
            current = reader.latest()
            for k in range(10):
                start = int(rng.integers(0, rows - delta_rows // 2))
                # half the rows overwrite existing ids, half are new ids
                delta_ids = [*ids[start : start + delta_rows // 2]] + [
                    f"new{rep}-{k}-{i}" for i in range(delta_rows - delta_rows // 2)
                ]
                weights = rng.standard_normal((delta_rows, dim), dtype=np.float32)
                delta = TableRows(delta_ids, weights)
                add("publish delta", timed(writer.publish_delta, {"user": delta}, k))
                if k == 0:
                    add("read full + 1 delta", timed(reader.latest))
                add("refresh: apply 1 new delta", timed(reader.refresh, current))
                current = reader.refresh(current)
            add("read full + 10 deltas", timed(reader.latest))
            sizes["full"] = dir_bytes(tmp / "m" / f"{1:010d}")
            sizes["delta"] = dir_bytes(tmp / "m" / f"{2:010d}")
            peer = tmp / "peer.npy"
            add("peer: np.save + fsync", timed(raw_save, peer, user.weights))
            add("peer: np.load", timed(np.load, peer))
        finally:
            shutil.rmtree(tmp)

    table = Table(title=f"snapshots: {rows:,} x {dim} float32 full, {delta_rows:,}-row deltas")
    table.add_column("operation")
    table.add_column("median s", justify="right")
    table.add_column("min s", justify="right")
    for name, values in figures.items():
        table.add_row(name, f"{median(values):.3f}", f"{min(values):.3f}")
    console.print(table)
    pub = median(figures["publish full"]) / median(figures["peer: np.save + fsync"])
    read = median(figures["read full (latest)"]) / median(figures["peer: np.load"])
    console.print(
        f"full on disk {sizes['full'] / 2**20:,.1f} MiB, delta {sizes['delta'] / 2**20:,.2f} MiB"
    )
    console.print(
        f"publish full / peer np.save+fsync = {pub:.2f}x; read full / np.load = {read:.2f}x"
    )


if __name__ == "__main__":
    typer.run(main)
