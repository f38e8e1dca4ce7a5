"""The Redis paths on a 3-master Redis Cluster next to a single Redis, same run, same data.

Run: `.venv/bin/python -m bench.redis_cluster [--rows N] [--reads N] [--impressions N]`.
The bench starts its own single `redis-server` and its own local cluster
(`bench.common.redis_pair`: 3 masters, all on this host, `REDIS_TUNING` on both) and
measures on each: the online writer (rows/s, pipelined as the stats sink uses it), the feature
read of serving (200 notes x 10 features, `FeatureClient.read`), the exposure writer
(impressions/s) and the exposure query (`ExposureFilter.seen`, 1,000 candidates). On one host the
cluster cannot add CPU: the figures show what routing by slot costs, not what sharding gains.
A bar chart of the ratios goes to `<out>/redis_cluster.png`.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import track
from rich.table import Table

from bench.common import median, percentile, redis_pair
from features.client import FeatureClient
from features.exposure import ExposureConfig, ExposureFilter, ExposureWriter
from features.online_writer import OnlineWriter
from features.redis_conn import Client, connect
from features.schema import feature_types

console = Console()
DAY = 86_400_000
T0 = 20_454 * DAY


def _columns(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        name: rng.integers(0, 5_000, rows) if kind == "int64" else rng.random(rows)
        for name, kind in feature_types("note_stats").items()
    }


def measure(client: Client, rows: int, reads: int, impressions: int) -> dict[str, float]:
    """The four figures on one Redis (or cluster)."""
    rng = np.random.default_rng(0)
    project = f"bench{uuid.uuid4().hex[:6]}"
    ids = [f"n{i}" for i in range(rows)]
    cols = _columns(rows, rng)
    writer = OnlineWriter(client, project)
    chunk = 2_000
    start = time.perf_counter()
    for lo in range(0, rows, chunk):
        writer.collect()
        part = {k: v[lo : lo + chunk] for k, v in cols.items()}
        writer.send("note_stats", ids[lo : lo + chunk], part, T0)
    writer.close()
    out = {"online writer, rows/s": rows / (time.perf_counter() - start)}
    reader = FeatureClient(client, project)
    names = list(feature_types("note_stats"))[:10]
    took = []
    for _ in range(reads):
        asked = [ids[i] for i in rng.integers(0, rows, 200)]
        t = time.perf_counter()
        values, _ = reader.read("note_stats", asked, names)
        took.append(time.perf_counter() - t)
        assert not np.isnan(values).any()
    out["feature read (200 notes), p50 ms"] = percentile(took, 50) * 1e3
    ns = f"{project}-exp"
    exposure = ExposureWriter(client, ExposureConfig(namespace=ns))
    users = [f"u{i}" for i in rng.integers(0, 2_000, impressions)]
    notes = [f"n{i}" for i in rng.integers(0, rows, impressions)]
    ts = T0 + rng.integers(0, 7 * DAY, impressions)
    start = time.perf_counter()
    for lo in range(0, impressions, 5_000):
        exposure.add_batch(users[lo : lo + 5_000], notes[lo : lo + 5_000], ts[lo : lo + 5_000])
    out["exposure writer, impressions/s"] = impressions / (time.perf_counter() - start)
    bloom = ExposureFilter(client, ns)
    took = []
    for q in range(reads):
        cands = [f"c{q}-{i}" for i in range(1_000)]
        t = time.perf_counter()
        bloom.seen(users[q], cands)
        took.append(time.perf_counter() - t)
    out["exposure query (1,000 candidates), p50 ms"] = percentile(took, 50) * 1e3
    return out


def main(
    rows: Annotated[int, typer.Option(help="Feature rows written.")] = 40_000,
    reads: Annotated[int, typer.Option(help="Reads and exposure queries timed.")] = 500,
    impressions: Annotated[int, typer.Option(help="Impressions written.")] = 100_000,
    reps: Annotated[int, typer.Option(help="Repetitions (medians are printed).")] = 3,
    out: Annotated[Path | None, typer.Option(help="PNG directory (default: temp).")] = None,
) -> None:
    """Measure and print the figures."""
    out = out or Path(tempfile.gettempdir()) / "streamrec-bench"
    figures: dict[str, dict[str, list[float]]] = {"single": {}, "cluster": {}}
    with redis_pair(cluster=True) as urls:
        clients = {kind: connect(url) for kind, url in urls.items()}
        for _ in track(range(reps), description="single Redis vs cluster", console=console):
            for kind, client in clients.items():
                for name, value in measure(client, rows, reads, impressions).items():
                    figures[kind].setdefault(name, []).append(value)
        for client in clients.values():
            client.close()
    table = Table(title=f"single Redis vs 3-master Redis Cluster on one host (medians of {reps})")
    for column in ("figure", "single", "cluster", "cluster / single"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    ratios = {}
    for name in figures["single"]:
        one, many = median(figures["single"][name]), median(figures["cluster"][name])
        ratios[name] = many / one
        table.add_row(name, f"{one:,.2f}", f"{many:,.2f}", f"{ratios[name]:.2f}x")
    console.print(table)
    _plot(ratios, out)


def _plot(ratios: dict[str, float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.barh(list(ratios), list(ratios.values()))
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("cluster / single Redis")
    fig.tight_layout()
    fig.savefig(out / "redis_cluster.png", dpi=120)
    console.print(f"plot: {out / 'redis_cluster.png'}")


if __name__ == "__main__":
    typer.run(main)
