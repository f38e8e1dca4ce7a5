"""Exposure filter: flow vs bare read+decode, Redis insert rate, seen() latency, memory, FP.

Run: `.venv/bin/python -m bench.exposure [--events N] [--reps R] [--queries Q]`.
Uses KAFKA_BOOTSTRAP/REDIS_URL if set, else a stack of its own; Redis DB 11, namespaces of its
own that are deleted at the end. `--redis-cluster`: the Redis figures (flow, inserts, queries,
memory, false positives) on a single Redis and a local 3-master Redis Cluster instead, both
started by the bench with the same settings (`bench.common.redis_pair`), printed side by side
with their same-run ratios. Writes bench/out/exposure_seen_latency.png.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from bytewax.testing import run_main
from rich.console import Console
from rich.progress import track

from bench.common import (
    bare_read_decode_rate,
    bench_stack,
    fresh_topic,
    median,
    percentile,
    print_pair,
    redis_pair,
)
from features.exposure import (
    ExposureConfig,
    ExposureFilter,
    ExposureWriter,
    bit_positions,
    hwm_key,
    layout_for,
    slice_prefix,
)
from features.redis_conn import Client, connect
from infra import stack
from streams.events import Event
from streams.exposure import ExposureSink, build_flow
from streams.kafka_io import KafkaBatchSource
from streams.replay import replay
from streams.sinks import CallbackSink
from streams.sources import ListSource
from streams.sources.synthetic import SyntheticConfig, SyntheticSource

console = Console()
DAY = 86_400_000
T0 = 20_454 * DAY  # 2026-01-01
OUT = Path(__file__).resolve().parent / "out"


def _drop(client: Client, namespace: str) -> None:
    batch = []
    keys = (
        key
        for pattern in (f"{namespace}:*", f"{{{namespace}}}:*")
        for key in client.scan_iter(match=pattern, count=5_000)
    )
    for key in keys:
        batch.append(key)
        if len(batch) == 5_000:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


def flow_rate(bootstrap: str, redis_url: str, topic: str, config: ExposureConfig) -> float:
    """Events/s of the exposure flow, Kafka -> Redis, bounded run in this process."""
    flow = build_flow(
        KafkaBatchSource(bootstrap, topic, tail=False),
        ExposureSink(redis_url, config),
        CallbackSink(lambda _: None),
    )
    start = time.perf_counter()
    run_main(flow)
    return time.perf_counter() - start


class BitfieldWriter:
    """The measured alternative: the same keys, bits set by pipelined `BITFIELD SET u1`."""

    def __init__(self, client: Client, config: ExposureConfig) -> None:
        self._client, self._config = client, config
        self._layout = layout_for(config)

    def add_batch(self, users: list[str], notes: list[str], ts: np.ndarray) -> None:
        """Set the bits of the impressions, one BITFIELD per user and slice, one pipeline."""
        layout, ns = self._layout, self._config.namespace
        slice_of = (ts // layout.slice_ms).tolist()
        positions = bit_positions(notes, layout.bits, layout.hashes).tolist()
        groups: dict[str, list[object]] = {}
        for user, s, row in zip(users, slice_of, positions, strict=True):
            args = groups.setdefault(f"{slice_prefix(ns, user)}{s}", [])
            for p in row:
                args += ("SET", "u1", p, 1)
        pipe = self._client.pipeline(transaction=False)
        ttl = layout.retention_ms + self._config.gc_slack_ms
        for key, args in groups.items():
            pipe.execute_command("BITFIELD", key, *args)
            pipe.pexpire(key, ttl)
        pipe.set(hwm_key(ns), int(ts.max()))
        pipe.execute()


def insert_rate(client: Client, impressions: list[Event], method: str, batch: int) -> float:
    """Impressions/s of a writer alone, pre-decoded impressions, in batches of `batch`."""
    config = ExposureConfig(namespace=f"bench-exp-{uuid.uuid4().hex[:8]}")
    writer = ExposureWriter(client, config) if method == "lua" else BitfieldWriter(client, config)
    cols = [
        (
            [e.user_id for e in impressions[lo : lo + batch]],
            [e.note_id for e in impressions[lo : lo + batch]],
            np.fromiter((e.ts for e in impressions[lo : lo + batch]), dtype=np.int64),
        )
        for lo in range(0, len(impressions), batch)
    ]
    start = time.perf_counter()
    for users, notes, ts in cols:
        writer.add_batch(users, notes, ts)
    elapsed = time.perf_counter() - start
    _drop(client, config.namespace)
    return len(impressions) / elapsed


def design_load(client: Client, config: ExposureConfig, users: int) -> dict[str, list[str]]:
    """Fill `users` users with exactly the design load (expected_items over all slices)."""
    writer = ExposureWriter(client, config)
    per_slice = config.expected_items // config.slices
    shown = {}
    for u in range(users):
        ts = T0 + np.repeat(np.arange(config.slices), per_slice) * config.slice_ms
        notes = [f"s{u}-{i}" for i in range(len(ts))]
        writer.add_batch([f"u{u}"] * len(ts), notes, ts)
        shown[f"u{u}"] = notes
    return shown


def naive_seen(client: Client, config: ExposureConfig, user: str, notes: list[str]) -> list:
    """The same query with one GETBIT per bit per live slice (one pipeline)."""
    layout = layout_for(config)
    hwm = int(client.get(hwm_key(config.namespace)))
    newest = hwm // layout.slice_ms
    positions = bit_positions(notes, layout.bits, layout.hashes).tolist()
    pipe = client.pipeline(transaction=False)
    prefix = slice_prefix(config.namespace, user)
    for s in range(newest - layout.slices + 1, newest + 1):
        for row in positions:
            for p in row:
                pipe.getbit(f"{prefix}{s}", p)
    bits = np.asarray(pipe.execute(), dtype=bool).reshape(layout.slices, len(notes), -1)
    return bits.all(axis=2).any(axis=0).tolist()


def query_figures(
    client: Client, config: ExposureConfig, users: int, queries: int, naive_too: bool
) -> dict[str, object]:
    """`seen()` latencies (s), the naive query's times (s; with `naive_too`, else none), memory
    per user (B) and the false-positive rate, on `users` users filled to the design load."""
    filled = design_load(client, config, users)
    bloom = ExposureFilter(client, config.namespace)
    rng = np.random.default_rng(0)
    latencies = []
    asks = []
    for q in range(queries):
        user = f"u{q % users}"
        known = list(rng.choice(filled[user], 100, replace=False))
        asks.append((user, known + [f"c{q}-{i}" for i in range(900)]))
    for user, cands in track(asks, description="seen() x 1,000 candidates", console=console):
        start = time.perf_counter()
        got = bloom.seen(user, cands)
        latencies.append(time.perf_counter() - start)
        assert all(got[:100]), "a false negative"
    naive = []
    for user, cands in track(
        asks[:3] if naive_too else [], description="naive GETBIT query", console=console
    ):
        start = time.perf_counter()
        slow = naive_seen(client, config, user, cands)
        naive.append(time.perf_counter() - start)
        assert slow == bloom.seen(user, cands)
    keys = [
        k
        for u in range(20)
        for k in client.scan_iter(match=f"{slice_prefix(config.namespace, f'u{u}')}*")
    ]
    memory = sum(client.memory_usage(k, samples=0) for k in keys) / 20
    never = [f"never-{i}" for i in range(50_000)]
    fp = float(np.mean([np.mean(bloom.seen(f"u{u}", never)) for u in range(20)]))
    _drop(client, config.namespace)
    return {"latencies": latencies, "naive": naive, "memory": memory, "fp": fp}


@contextmanager
def _redis_urls(state: stack.StackState, cluster: bool) -> Iterator[dict[str, str]]:
    """The stack's Redis (DB 11); with `cluster`, a single Redis and a cluster of the bench's."""
    if not cluster:
        yield {"single": f"{state.redis_url.rsplit('/', 1)[0]}/11"}
        return
    with redis_pair(cluster=True) as urls:
        yield urls


def main(
    events: int = 200_000,
    reps: int = 3,
    queries: int = 3_000,
    users: int = 200,
    redis_cluster: Annotated[
        bool,
        typer.Option(
            help="Measure the Redis figures on a single Redis and a local 3-master cluster "
            "(both the bench's own), side by side."
        ),
    ] = False,
) -> None:
    """Measure and print the figures."""
    with bench_stack() as state, _redis_urls(state, redis_cluster) as urls:
        clients = {kind: connect(url) for kind, url in urls.items()}
        world = SyntheticConfig(seed=21)
        stream = [e for b in SyntheticSource(world, limit=events).batches() for e in b]
        shown = [e for e in stream if e.type == "impression"]
        topic = fresh_topic(state.bootstrap, "bench-exposure")
        replay(ListSource(stream), state.bootstrap, topic)

        flow_s: dict[str, list[float]] = {kind: [] for kind in urls}
        bare = []
        for _ in track(range(reps), description="flow vs bare read+decode", console=console):
            for kind, url in urls.items():
                config = ExposureConfig(namespace=f"bench-exp-{uuid.uuid4().hex[:8]}")
                flow_s[kind].append(flow_rate(state.bootstrap, url, topic, config))
                _drop(clients[kind], config.namespace)
            bare.append(bare_read_decode_rate(state.bootstrap, topic, events))

        rates: dict[tuple[str, str], list[float]] = {
            (kind, method): [] for kind in urls for method in ("lua", "bitfield")
        }
        for _ in track(range(reps), description="Redis insert: lua vs bitfield", console=console):
            for (kind, method), got in rates.items():
                got.append(insert_rate(clients[kind], shown, method, 5_000))

        config = ExposureConfig(namespace=f"bench-exp-{uuid.uuid4().hex[:8]}")
        layout = layout_for(config)
        asked = {  # the naive query (360k GETBITs) only where it is the peer: the single Redis
            kind: query_figures(c, config, users, queries, kind == "single")
            for kind, c in clients.items()
        }
        for client in clients.values():
            client.close()

    one = asked["single"]
    latencies, naive = one["latencies"], one["naive"]
    p50, p99 = percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3
    flow = events / median(flow_s["single"])
    lua, bitfield = median(rates["single", "lua"]), median(rates["single", "bitfield"])
    console.print(f"stream: {events:,} synthetic events ({len(shown):,} impressions), "
                  f"{world.users:,} users; medians of {reps}")  # fmt: skip
    console.print(
        f"exposure flow Kafka -> Redis   {flow:,.0f} events/s "
        f"({len(shown) / median(flow_s['single']):,.0f} impressions/s)"
    )
    console.print(f"bare Bytewax read + decode     {median(bare):,.0f} events/s")
    console.print(f"ratio flow / bare              {flow / median(bare):.2f}x  (target >= 0.8x)")
    console.print(f"Redis insert, Lua (BITOP OR)   {lua:,.0f} impressions/s  (target >= 200k/s)")
    console.print(f"Redis insert, BITFIELD pipe    {bitfield:,.0f} impressions/s")
    console.print(f"ratio Lua / BITFIELD           {lua / bitfield:.1f}x")
    console.print(
        f"layout: {layout.slices} daily slices x {layout.bits} bits, {layout.hashes} hashes, "
        f"{layout.bits_per_item:.1f} bits/item; design load {layout.expected_items:,}/user"
    )
    console.print(
        f"seen() 1,000 candidates        p50 {p50:.2f} ms  p99 {p99:.2f} ms  "
        f"({queries:,} calls, {users} users; target p99 <= 2 ms)"
    )
    console.print(
        f"naive GETBIT per bit           {median(naive) * 1e3:,.0f} ms "
        f"= {median(naive) / percentile(latencies, 50):,.0f}x the p50"
    )
    memory = one["memory"]
    console.print(
        f"memory per user (MEMORY USAGE) {memory:,.0f} B  ({memory * 8 / layout.expected_items:.1f}"
        f" bits/exposure; the bits alone: {layout.slices * layout.bits / 8:,.0f} B)"
    )
    console.print(
        f"false positives at design load {one['fp']:.2%}  (configured {config.fp_rate:.0%})"
    )
    if redis_cluster:
        figures = {
            kind: {
                "exposure flow Kafka -> Redis, events/s": events / median(flow_s[kind]),
                "Redis insert, Lua, impressions/s": median(rates[kind, "lua"]),
                "Redis insert, BITFIELD pipe, impressions/s": median(rates[kind, "bitfield"]),
                "seen() 1,000 candidates, p50 ms": percentile(got["latencies"], 50) * 1e3,
                "seen() 1,000 candidates, p99 ms": percentile(got["latencies"], 99) * 1e3,
                "memory per user, B": got["memory"],
                "false positives at design load, %": got["fp"] * 100,
            }
            for kind, got in asked.items()
        }
        print_pair(figures, f"single Redis vs 3-master Redis Cluster, same run (medians of {reps})")
    _plot(latencies, median(naive))


def _plot(latencies: list[float], naive: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    ms = np.asarray(latencies) * 1e3
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(ms, bins=np.logspace(np.log10(ms.min()), np.log10(max(ms.max(), 2.5)), 60))
    ax.set_xscale("log")
    for q, style in ((50, "--"), (99, ":")):
        ax.axvline(np.percentile(ms, q), color="k", linestyle=style, label=f"p{q}")
    ax.axvline(2.0, color="r", label="target p99 2 ms")
    ax.set_xlabel("seen() latency, 1,000 candidates, 30 daily slices (ms)")
    ax.set_ylabel("calls")
    ax.set_title(f"ExposureFilter.seen (naive GETBIT: {naive * 1e3:,.0f} ms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "exposure_seen_latency.png", dpi=120)
    console.print(f"plot: {OUT / 'exposure_seen_latency.png'}")


if __name__ == "__main__":
    typer.run(main)
