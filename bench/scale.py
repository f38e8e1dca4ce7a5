"""Stream state as the catalogue grows: the stats job over worlds of 50k, 500k and 2M entities
fed the same number of events.

Run: `.venv/bin/python -m bench.scale [--events N] [--worlds 50000,500000,2000000] [--reps R]`.

Each world has `entities` ids (half users, half notes); every id has at least one event when
the events allow (events walk through all users, and five in six through all notes, in a
shuffled order; the sixth goes to a Zipf-popular note), so the entities the job holds is the
world's size (1.2M events cover 2M entities). The events (types,
watch and durations like the synthetic source's, over `--span-hours` of event time) are written
once to a file of 4-partition `RawBatch`es; a fresh process per world runs the stats dataflow
(`streams.stats.build_flow`, 8 shards per kind, no recovery store, as `streamrec run stats
--until-end`) in-process on them, so the figures hold no Kafka. Its sink is the online sink's
work without the bulk of Redis: every flush's rows are derived and encoded in Redis protocol by
`OnlineWriter` and its offline-log rows built as Arrow tables (not written); the rows of one
entity in `--redis-sample` are really written to Redis (DB 12, a project of its own; its keys
deleted at the end, the DB never flushed), and `MEMORY USAGE` of those keys gives the online
store's bytes per entity. The sink reports its write time to the flush pacer
(`streams.pacing`) as the online sink does, and the flush interval counts the process's CPU
time (`_pace_by_cpu`: on a loaded machine a wall-clock interval would hold fewer events).

Per world: events/s (wall of the dataflow), events per CPU-second (and the system and
garbage-collection shares), peak RSS (VmHWM) and RSS per entity, the tile
stores' own bytes per entity (live and offline-log stores, their `nbytes`), the recovery
snapshot (the shards' states pickled at the end of the run) per entity, Redis bytes per
entity; then the ratio of each world's events/s to the smallest world's, the bytes per key of
the sample joiner's and the co-click job's state (tracemalloc), a projection of
processes and memory for 10M and 110M entities, and a PNG of the costs against entities
(`--out`, default bench/out/scale.png).
"""

from __future__ import annotations

import gc
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import redis
import typer
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.common import median
from features.offline_log import offline_rows
from features.online_writer import OnlineWriter
from features.schema import FeatureConfig, derive
from streams.events import Event, encode_event
from streams.kafka_io import RawBatch
from streams.pacing import PACER
from streams.stats import StatsFlush, shard_keys

console = Console()
OUT = Path(__file__).resolve().parent / "out"
BENCH_DB = 12
PARTITIONS = 4
START_MS = 1_767_225_600_000
TYPES = ("impression", "click", "play", "like", "collect", "share", "comment", "follow", "hide")
TYPE_P = (0.70, 0.10, 0.10, 0.04, 0.02, 0.01, 0.01, 0.005, 0.015)
TARGETS = (10_000_000, 110_000_000)
"""Entity counts of the projection (the design's 10M notes, and 100M users + 10M notes)."""


def world_batches(entities: int, events: int, span_ms: int, seed: int = 7) -> Iterator[RawBatch]:
    """The world's events in event-time order, as 4-partition batches (by user, as keyed
    producers do) of about 500 events each."""
    rng = np.random.default_rng(seed)
    users, notes = entities // 2, entities - entities // 2
    duration = np.clip(rng.lognormal(10.5, 0.8, size=notes), 3_000, 600_000).astype(np.int64)
    user_order, note_order = rng.permutation(users), rng.permutation(notes)
    chunk = 2_000
    ts_all = np.sort(rng.integers(0, span_ms, size=events)) + START_MS
    offsets = [0] * PARTITIONS
    for lo in range(0, events, chunk):
        n = min(chunk, events - lo)
        i = np.arange(lo, lo + n)
        # Users walk through all ids; notes too, but one event in six goes to a popular note.
        user = user_order[i % users]
        hot = i % 6 == 5
        note = np.where(
            hot, np.minimum(rng.zipf(1.3, n) - 1, notes - 1), note_order[(i - i // 6) % notes]
        )
        kind = rng.choice(len(TYPES), size=n, p=TYPE_P)
        watch = (rng.random(n) * duration[note]).astype(np.int64)
        ts = ts_all[lo : lo + n].tolist()
        by_part: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
        keys: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
        for j, (u, note_j, k) in enumerate(
            zip(user.tolist(), note.tolist(), kind.tolist(), strict=True)
        ):
            play = k == 2
            e = Event(
                f"w{entities}:{lo + j}",
                ts[j],
                f"u{u}",
                f"n{note_j}",
                TYPES[k],
                position=j % 8 if k == 0 else None,
                watch_ms=int(watch[j]) if play else None,
                duration_ms=int(duration[note_j]) if play else None,
            )
            p = u % PARTITIONS
            by_part[p].append(encode_event(e))
            keys[p].append(e.user_id.encode())
        for p in range(PARTITIONS):
            if by_part[p]:
                first = offsets[p]
                offsets[p] += len(by_part[p])
                yield RawBatch("scale", p, keys[p], by_part[p], list(range(first, offsets[p])))


def _read_batches(path: Path) -> Iterator[RawBatch]:
    with path.open("rb") as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return


def _hwm_bytes() -> int:
    """Peak resident set (VmHWM) of this process, bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class _Counting:
    """A file that only counts what is written to it."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        size = memoryview(data).nbytes
        self.n += size
        return size


class _Part(StatefulSinkPartition):
    def __init__(self, redis_url: str, project: str, sample: int, report: dict) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self.writer = OnlineWriter(self.client, project)
        self.config = FeatureConfig()
        self.sample, self.report = sample, report

    def write_batch(self, items: list) -> None:
        start = time.perf_counter()
        for flush in items:
            if flush.ids:
                self._online(flush)
            log = flush.log
            if log is not None:
                columns = derive(flush.view, log.counts, self.config)
                offline_rows(flush.view, log.ids, columns, log.ts, log.created_ms)
                self.report["log_rows"] += len(log.ids)
        self.writer.collect()
        PACER.record(time.perf_counter() - start)  # flushes wait longer as the sink does

    def _online(self, flush: StatsFlush) -> None:
        """Encode every row as the online sink does; send the sampled entities' rows."""
        columns = derive(flush.view, flush.counts, self.config)
        self.writer.encode(flush.view, flush.ids, columns, flush.as_of_ms)
        self.report["online_rows"] += len(flush.ids)
        keep = [i for i, k in enumerate(flush.ids) if zlib.crc32(k.encode()) % self.sample == 0]
        if keep:
            ids = [flush.ids[i] for i in keep]
            self.writer.send(flush.view, ids, {c: v[keep] for c, v in columns.items()}, 0)
            self.report["sampled"].update((flush.view, i) for i in ids)

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self.writer.close()


class _Sink(FixedPartitionedSink):
    def __init__(self, redis_url: str, project: str, shards: int, sample: int, report: dict):
        self.args = (redis_url, project, sample, report)
        self.parts = shard_keys(shards)

    def list_parts(self) -> list[str]:
        return self.parts

    def part_fn(self, item_key: str) -> int:
        return self.parts.index(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Part:
        del step_id, for_part, resume_state  # nothing to resume
        return _Part(*self.args)


def _nbytes(store: object) -> dict[str, int]:
    """A tile store's bytes by part (zeros for a store that cannot tell: an older version)."""
    nbytes = getattr(store, "nbytes", None)
    return nbytes() if nbytes else {"tiles": 0, "sums": 0, "index": 0}


def _pace_by_cpu() -> None:
    """Make the shards flush every interval of this process's CPU time, not of wall time.

    A job process owns its core; on a shared machine (here: 2 cores, a dozen processes) a
    200 ms wall-clock flush would carry only the CPU share's fraction of the events, and the
    job would spend its time on many small flushes - the figures would follow the machine's
    load rather than the entities. Dividing the interval by the CPU share measured over the last
    second (at least 2 %) gives each flush the events of a dedicated core's interval.
    """
    last = [time.perf_counter(), time.process_time(), 1.0]  # wall, CPU, share
    plain = PACER.interval_s

    def interval_s(base_s: float) -> float:
        wall, cpu = time.perf_counter(), time.process_time()
        if wall - last[0] >= 1.0:
            last[2] = min(1.0, max(0.02, (cpu - last[1]) / (wall - last[0])))
            last[0], last[1] = wall, cpu
        return plain(base_s / last[2])

    PACER.interval_s = interval_s  # type: ignore[method-assign]


def child(path: Path, events: int, redis_url: str, sample: int) -> dict:
    """Run the stats dataflow on the batches in `path`; return its figures."""
    from bytewax.testing import TestingSink, TestingSource, run_main

    from streams import stats
    from streams.config import StatsConfig

    config = StatsConfig()
    report: dict = {"online_rows": 0, "log_rows": 0, "sampled": set(), "shards": []}
    eof = stats.ShardLogic.on_eof

    def on_eof(self: stats.ShardLogic) -> tuple:
        """The shard's own end, then the bench's probe of its final state."""
        out = eof(self)
        st = self.state
        if not report["shards"]:
            report["hwm_before_snapshots"] = _hwm_bytes()
        counting = _Counting()
        pickle.dump(st, counting, protocol=pickle.HIGHEST_PROTOCOL)
        parts = {"live": _nbytes(st.store), "log": _nbytes(st.log)}
        report["shards"].append(
            {
                "entities": len(st.store),
                "log_entities": len(st.log),
                "snapshot": counting.n,
                **parts,
            }
        )
        return out

    stats.ShardLogic.on_eof = on_eof
    _pace_by_cpu()
    project = f"scale{uuid.uuid4().hex[:6]}"
    dead: list = []
    flow = stats.build_flow(
        TestingSource(_read_batches(path)),
        _Sink(redis_url, project, config.shards, sample, report),
        TestingSink(dead),
        config,
        recoverable=False,
        partitions=list(range(PARTITIONS)),
    )
    gc.collect()
    base = _rss_bytes()
    collecting = {"s": 0.0, "at": 0.0}

    def gc_timer(phase: str, info: dict) -> None:
        del info  # only the phase matters
        if phase == "start":
            collecting["at"] = time.perf_counter()
        else:
            collecting["s"] += time.perf_counter() - collecting["at"]

    gc.callbacks.append(gc_timer)
    start, cpu, sys_cpu = time.perf_counter(), time.process_time(), os.times().system
    run_main(flow)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    sys_cpu = os.times().system - sys_cpu
    gc.callbacks.remove(gc_timer)
    peak = report.get("hwm_before_snapshots", _hwm_bytes())
    client = redis.Redis.from_url(redis_url)
    writer = OnlineWriter(client, project)
    keys = [writer.redis_key(v, i) for v, i in report["sampled"]]
    probe = keys[:2_000]
    pipe = client.pipeline(transaction=False)
    for k in probe:
        pipe.memory_usage(k, samples=0)
    used = [u for u in pipe.execute() if u is not None]
    for lo in range(0, len(keys), 1_000):
        client.delete(*keys[lo : lo + 1_000])
    shards = report["shards"]
    entities = sum(s["entities"] for s in shards)

    def total(kind: str, part: str) -> int:
        return sum(s[kind][part] for s in shards)

    return {
        "events": events,
        "wall_s": wall,
        "events_per_s": events / wall,
        "events_per_cpu_s": events / cpu,
        "cpu_s": cpu,
        "sys_cpu_s": sys_cpu,
        "gc_s": collecting["s"],
        "entities": entities,
        "log_entities": sum(s["log_entities"] for s in shards),
        "base_rss": base,
        "peak_rss": peak,
        "snapshot_bytes": sum(s["snapshot"] for s in shards),
        "tiles_bytes": total("live", "tiles") + total("log", "tiles"),
        "sums_bytes": total("live", "sums") + total("log", "sums"),
        "index_bytes": total("live", "index") + total("log", "index"),
        "redis_per_entity": float(np.mean(used)) if used else float("nan"),
        "online_rows": report["online_rows"],
        "log_rows": report["log_rows"],
        "dead_letters": len(dead),
    }


def joiner_keys(n: int = 20_000) -> dict[str, float]:
    """Bytes per key of the sample joiner's state, by tracemalloc over its own user-shard logic:
    n open impressions (n users, attribution windows open: each with its row of
    `OpenImpressions`, join keys, de-duplication entries and its user's point-in-time tile row),
    then a click of each (attached, plus the user's click history)."""
    import tracemalloc

    from streams.config import SamplesConfig
    from streams.samples import Part, UserLogic, UserState

    cfg = SamplesConfig()
    shown = [
        Event(f"i{i}", START_MS + i, f"u{i}", f"n{i}", "impression", position=0) for i in range(n)
    ]
    clicks = [Event(f"c{i}", START_MS + n + i, f"u{i}", f"n{i}", "click") for i in range(n)]
    logic = UserLogic(UserState(), cfg, partitions=[0], recoverable=False)
    gc.collect()
    tracemalloc.start()
    hwm = START_MS + n + cfg.allowed_lateness_ms + 1
    logic.on_item(Part("u0", 0, hwm, shown))
    gc.collect()
    opened = tracemalloc.get_traced_memory()[0]
    logic.on_item(Part("u0", 0, hwm + n, clicks))
    gc.collect()
    clicked = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    store = logic.state.core.store
    parts = store.nbytes()
    return {
        "open impression (all its state)": opened / n,
        "  of which its user's point-in-time tiles": sum(parts.values()) / len(store),
        "click attached + user history (20 max)": (clicked - opened) / n,
    }


def coclick_keys(n: int = 20_000, clicks: int = 5) -> dict[str, float]:
    """Bytes per key of the co-click (ItemCF/Swing) job's state, by tracemalloc over its own
    step logic: n notes seen (first-seen time, the fresh index, their author's newest notes),
    then n users clicking `clicks` of them each (the click graph: the user's kept notes, the
    note's clickers with their click times). The lists themselves live in Redis."""
    import tracemalloc

    from streams.config import CoClickConfig
    from streams.itemcf import ClickGraph, CoClickLogic, CoClickState
    from streams.itemcf import Part as CoClickPart

    cfg = CoClickConfig()
    seen = [(f"n{i}", START_MS + i, False, f"a{i // 10}", "c") for i in range(n)]
    rng = np.random.default_rng(3)
    picks = rng.integers(0, n, size=(n, clicks)).tolist()
    clicked = [(f"u{u}", f"n{j}", START_MS + n + u) for u in range(n) for j in picks[u]]
    logic = CoClickLogic(CoClickState(ClickGraph(cfg.user_window)), cfg, recoverable=False)
    gc.collect()
    tracemalloc.start()
    logic.apply(CoClickPart([], seen, START_MS + n))
    logic.refresh()  # the change sets are emptied, as each recomputation does
    gc.collect()
    after_seen = tracemalloc.get_traced_memory()[0]
    logic.apply(CoClickPart(clicked, [], START_MS + 2 * n))
    st = logic.state
    st.graph.dirty, st.graph.renormed = set(), set()  # as taken by a recomputation
    gc.collect()
    after_clicks = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    edges = sum(len(v) for v in st.graph.user_notes.values())
    return {
        "note seen (first seen, fresh index, author's newest)": after_seen / n,
        f"user with {clicks} clicked notes (graph, both directions)": (after_clicks - after_seen)
        / n,
        "  per click kept in the graph": (after_clicks - after_seen) / edges,
    }


def _projection(rows: list[dict], memory_gb: float) -> list[dict]:
    """Processes and memory for the target entity counts, from the largest two worlds' slope."""
    a, b = sorted(rows, key=lambda r: r["entities"])[-2:]
    slope = (b["peak_rss"] - a["peak_rss"]) / max(b["entities"] - a["entities"], 1)
    fixed = b["peak_rss"] - slope * b["entities"]
    snap = b["snapshot_bytes"] / b["entities"]
    per_process = (memory_gb * 2**30 - fixed) / slope
    out = []
    for target in TARGETS:
        processes = math.ceil(target / per_process)
        out.append(
            {
                "entities": target,
                "processes": processes,
                "job_gb": (processes * fixed + target * slope) / 2**30,
                "snapshot_gb": target * snap / 2**30,
                "redis_gb": target * b["redis_per_entity"] / 2**30,
                "slope": slope,
                "fixed": fixed,
            }
        )
    return out


def _plot(rows: list[dict], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([r["entities"] for r in rows], dtype=float)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (
        ("peak_rss", "peak RSS"),
        ("state_bytes", "tile stores"),
        ("snapshot_bytes", "recovery snapshot"),
    ):
        left.plot(x, [r[key] / r["entities"] / 1024 for r in rows], "o-", label=label)
    left.plot(x, [r["redis_per_entity"] / 1024 for r in rows], "o--", label="Redis (online)")
    left.axhline(2.5, color="grey", ls=":", label="target 2.5 KB")
    left.set(xscale="log", xlabel="entities", ylabel="KB per entity", title="memory per entity")
    left.legend()
    right.plot(x, [r["events_per_s"] for r in rows], "o-")
    right.set(xscale="log", xlabel="entities", ylabel="events/s", title="stats job events/s")
    right.set_ylim(bottom=0)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "scale.png"
    fig.savefig(path, dpi=110)
    return path


def _run_worlds(
    sizes: list[int], events: int, reps: int, span_hours: float, sample: int, parallel: bool
) -> dict[int, list[dict]]:
    """Write each world's events once; run the job on each `reps` times; the child figures."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    results: dict[int, list[dict]] = {s: [] for s in sizes}
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("writing the worlds' events", total=len(sizes))
            files = {}
            for size in sizes:
                files[size] = tmp / f"world-{size}.pkl"
                with files[size].open("wb") as f:
                    for batch in world_batches(size, events, int(span_hours * 3_600_000)):
                        pickle.dump(batch, f, protocol=pickle.HIGHEST_PROTOCOL)
                progress.advance(task)
            task = progress.add_task("stats job per world", total=len(sizes) * reps)
            for _ in range(reps):
                groups = [sizes] if parallel else [[size] for size in sizes]
                for group in groups:
                    jobs = {
                        size: subprocess.Popen(
                            [
                                *(sys.executable, "-m", "bench.scale", "--events", str(events)),
                                *("--redis-sample", str(sample), "--child-file", str(files[size])),
                            ],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            text=True,
                        )
                        for size in group
                    }
                    for size, job in jobs.items():
                        stdout, stderr = job.communicate(timeout=7_200)
                        if job.returncode != 0:
                            raise RuntimeError(f"world {size}: {stderr[-3000:]}")
                        results[size].append(json.loads(stdout.strip().splitlines()[-1]))
                        progress.advance(task)
    finally:
        for f in tmp.glob("*"):
            f.unlink()
        tmp.rmdir()
    return results


def main(
    events: int = 1_200_000,
    worlds: str = "50000,500000,2000000",
    reps: int = 1,
    span_hours: float = 6.0,
    redis_sample: int = 32,
    process_gb: float = 16.0,
    out: Path = OUT,
    parallel: bool = False,
    load: str = "",
    child_file: str = "",
) -> None:
    """Run the stats job over growing worlds; print memory, snapshot, Redis and events/s.

    Args:
        events: events per world (the same in every world).
        worlds: entities per world, comma-separated.
        reps: runs per world (medians; the worlds interleaved).
        span_hours: event-time span of the events.
        redis_sample: write 1 entity in this many to Redis.
        process_gb: memory of one process, for the projection.
        out: directory of the PNG plot and of scale.json (the runs' figures).
        parallel: run the worlds of a repetition at the same time (on a loaded machine each
            then gets its share of the cores; events per CPU-second and peak RSS are per
            process either way, events/s of wall time are not comparable to a lone run's).
        load: print and plot the figures of an earlier run's scale.json instead of running.
        child_file: (internal) run one world's events from this file and print its figures.
    """
    base = urlparse(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    redis_url = base._replace(path=f"/{BENCH_DB}").geturl()
    if child_file:
        figures = child(Path(child_file), events, redis_url, redis_sample)
        print(json.dumps(figures))
        return
    sizes = [int(w) for w in worlds.split(",")]
    if load:
        results = {int(k): v for k, v in json.loads(Path(load).read_text()).items()}
        sizes = sorted(results)
    else:
        results = _run_worlds(sizes, events, reps, span_hours, redis_sample, parallel)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale.json").write_text(json.dumps(results))
    rows = []
    for size in sizes:
        runs = results[size]
        row = {k: median([r[k] for r in runs]) for k in runs[0]}
        row["world"] = size
        row["state_bytes"] = row["tiles_bytes"] + row["sums_bytes"] + row["index_bytes"]
        rows.append(row)
    first = rows[0]
    table = Table(title=f"stats job, {events:,} events per world ({reps} run(s), medians)")
    for col in (
        "world",
        "entities",
        "events/s",
        "events/CPU-s",
        "x smallest (wall)",
        "x smallest (CPU)",
        "peak RSS",
        "RSS/entity",
        "(RSS-base)/entity",
        "tile stores/entity",
        "snapshot/entity",
        "Redis/entity",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        e = r["entities"]
        table.add_row(
            f"{r['world']:,}",
            f"{e:,}",
            f"{r['events_per_s']:,.0f}",
            f"{r['events_per_cpu_s']:,.0f}",
            f"{r['events_per_s'] / first['events_per_s']:.2f}",
            f"{r['events_per_cpu_s'] / first['events_per_cpu_s']:.2f}",
            f"{r['peak_rss'] / 2**20:,.0f} MB",
            f"{r['peak_rss'] / e:,.0f} B",
            f"{(r['peak_rss'] - r['base_rss']) / e:,.0f} B",
            f"{r['state_bytes'] / e:,.0f} B",
            f"{r['snapshot_bytes'] / e:,.0f} B",
            f"{r['redis_per_entity']:,.0f} B",
        )
    console.print(table)
    for r in rows:
        e = r["entities"]
        console.print(
            f"world {r['world']:,}: tiles {r['tiles_bytes'] / e:,.0f} B, sums "
            f"{r['sums_bytes'] / e:,.0f} B, index {r['index_bytes'] / e:,.0f} B per entity "
            f"(live + offline-log stores); {r['online_rows']:,.0f} online rows, "
            f"{r['log_rows']:,.0f} log rows, {r['dead_letters']:.0f} dead letters; "
            f"base RSS {r['base_rss'] / 2**20:,.0f} MB; CPU {r['cpu_s']:,.1f} s (system "
            f"{r['sys_cpu_s']:,.1f} s, garbage collection {r['gc_s']:,.1f} s of wall)"
        )
    proj = Table(title=f"projection (one process = {process_gb:g} GB; slope of the largest worlds)")
    for col in ("entities", "processes", "job memory", "snapshots", "Redis"):
        proj.add_column(col, justify="right")
    for p in _projection(rows, process_gb):
        proj.add_row(
            f"{p['entities']:,}",
            str(p["processes"]),
            f"{p['job_gb']:,.1f} GB",
            f"{p['snapshot_gb']:,.1f} GB",
            f"{p['redis_gb']:,.1f} GB",
        )
    console.print(proj)
    p = _projection(rows, process_gb)[0]
    console.print(f"slope {p['slope']:,.0f} B/entity, fixed {p['fixed'] / 2**20:,.0f} MB/process")
    console.print(f"plot: {_plot(rows, out)}")
    for title, sizes in (
        ("sample joiner: bytes per key (tracemalloc, 20k keys)", joiner_keys()),
        (
            "co-click job (ItemCF/Swing): bytes per key (tracemalloc, 20k notes/users)",
            coclick_keys(),
        ),
    ):
        table = Table(title=title)
        table.add_column("state")
        table.add_column("bytes", justify="right")
        for name, size in sizes.items():
            table.add_row(name, f"{size:,.0f}")
        console.print(table)
    console.print("exposure job: no keyed state (Bloom bits live in Redis); 0 B per key in the job")


if __name__ == "__main__":
    typer.run(main)
