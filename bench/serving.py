"""Serving: faiss index choice, /recommend latency at 1,000 retrieved / 200 ranked, Feast peer.

Run: `.venv/bin/python -m bench.serving [--notes 5000] [--requests 400]`.

1. Index types at catalogue sizes 10k / 100k / 1M (unit vectors, d=32): build time, query time
   for k=1,000, recall@100 against exact search (IndexFlatIP).
2. A ranker, a retriever and the pre-ranker are trained (full training, in process) on
   synthetic samples over `--notes` notes and published; note and user window counts are
   written to Redis (DB 11, a project of its own, deleted at the end) with the online writer;
   impressions of every user go into the exposure filter. `/recommend` is called through the
   ASGI app in process (FastAPI TestClient: routing, validation and JSON included, no socket),
   retrieve_k 2,000 (about 2,000 merged candidates), pre-ranked to rank_k 200. Peer, same
   run: Feast's `get_online_features` for the same 200 notes' counts.
3. With `--concurrency 1,8,32` (and `--workers 1,2`): `streamrec serve --workers W` run alone
   as its own process on the same models and stores, loaded by C concurrent keep-alive clients
   (asyncio + httpx, this process) for `--seconds` each: throughput, p50 / p99 latency and the
   503s of the admission bound; the ratio of each to one worker at one client, same run.
Writes bench/out/serving_latency.png (and serving_scaling.png with --concurrency).
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import faiss
import numpy as np
import redis
import torch
import typer
import yaml
from fastapi.testclient import TestClient
from rich.console import Console
from rich.progress import track

from bench.common import bench_stack, median, percentile
from features.client import FeatureClient
from features.exposure import ExposureConfig, ExposureWriter
from features.online_writer import OnlineWriter
from features.samples import STAT_FEATURES
from features.schema import FeatureConfig, derive
from features.store import apply_definitions, feature_store
from features.windows import METRICS, WINDOWS
from infra.config import load_settings
from infra.processes import stop
from infra.service import service_for
from learners.config import LearnConfig
from learners.full import load_or_create, load_or_create_preranker, prerank_pass, train_pass
from learners.inputs import LABEL_COLUMNS, Columns, F
from learners.snapshots import SnapshotConfig, SnapshotWriter
from serving.config import PrerankConfig, ServingConfig
from serving.index import NoteIndex
from streams.runtime import tune_gc

console = Console(width=120)
OUT = Path(__file__).resolve().parent / "out"
T0 = 1_767_225_600_000


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _vectors(kind: str, n: int, d: int, seed: int) -> np.ndarray:
    """Unit vectors: "uniform" on the sphere (hardest case), or "clustered" around 1,000
    centres (closer to trained item towers, whose notes group by interest)."""
    if kind == "uniform":
        return _unit(n, d, seed)
    rng = np.random.default_rng(seed)
    centres = _unit(1_000, d, 12_345)  # the same centres for the catalogue and the queries
    v = centres[rng.integers(0, 1_000, n)] + 0.35 * rng.normal(size=(n, d)) / np.sqrt(d)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


# index kind -> search settings tried on one build (the first reaching recall 0.95 is the pick)
SETTINGS = {"flat": [{}], "ivf": [{"nprobe": p} for p in (16, 64, 256)]}
SETTINGS["hnsw"] = [{"ef_search": e} for e in (128, 512)]


def index_table(sizes: list[int], datasets: list[str], queries: int = 50) -> list[dict]:
    """Build/query time and recall@100 of each index kind at each catalogue size."""
    rows = []
    for data in datasets:
        for n in sizes:
            vectors = _vectors(data, n, 32, n)
            ids = [str(i) for i in range(n)]
            qs = _vectors(data, queries, 32, 1)
            exact = faiss.IndexFlatIP(32)
            exact.add(vectors)
            _, truth = exact.search(qs, 100)
            for kind, tries in SETTINGS.items():
                t0 = time.perf_counter()
                index = NoteIndex.build(ids, vectors, kind)
                build = time.perf_counter() - t0
                for params in tries:
                    index.tune(**params)
                    times, recalls = [], []
                    for q, true in zip(qs, truth, strict=True):
                        t0 = time.perf_counter()
                        got, _ = index.search(q, 1_000)
                        times.append((time.perf_counter() - t0) * 1000)
                        recalls.append(len({int(g) for g in got[:100]} & set(true.tolist())) / 100)
                    setting = ",".join(f"{k}={v}" for k, v in params.items()) or "exact"
                    rows.append(
                        {
                            "data": data,
                            "notes": n,
                            "kind": kind,
                            "setting": setting,
                            "build_s": build,
                            "query_ms": median(times),
                            "recall100": float(np.mean(recalls)),
                        }
                    )
                    console.print(
                        f"{data:9} {n:>9,} {kind:5} {setting:13} build {build:7.2f} s  "
                        f"query(k=1000) p50 {median(times):6.2f} ms  "
                        f"recall@100 {np.mean(recalls):.3f}"
                    )
            del exact
    return rows


def _samples(n: int, users: int, notes: int, seed: int = 0) -> Columns:
    rng = np.random.default_rng(seed)
    u, v = rng.integers(0, users, n), rng.integers(0, notes, n)
    click = rng.random(n) < 0.15
    labels = {k: (click & (rng.random(n) < 0.3)).astype(np.float32) for k in LABEL_COLUMNS}
    labels["click"] = click.astype(np.float32)
    return Columns(
        user_id=[f"u{i}" for i in u],
        note_id=[f"n{i}" for i in v],
        author_id=[f"a{i % 500}" for i in v],
        category=[f"c{i % 20}" for i in v],
        ts=T0 + np.arange(n, dtype=np.int64) * 100,
        position=rng.integers(0, 8, n),
        user_stats=rng.poisson(3, (n, F)).astype(np.float32),
        note_stats=rng.poisson(30, (n, F)).astype(np.float32),
        labels=labels,
        watch_ms=np.where(click, rng.exponential(40_000, n), 0).astype(np.float32),
        keep_rate=np.ones(n, np.float32),
    )


def _write_stats(client: redis.Redis, project: str, view: str, ids: list[str]) -> None:
    rng = np.random.default_rng(5)
    arrays = {w.name: rng.poisson(20, (len(ids), len(METRICS))).astype(np.int64) for w in WINDOWS}
    cols = derive(view, arrays, FeatureConfig())
    writer = OnlineWriter(client, project)
    for lo in range(0, len(ids), 2_000):
        part = {k: v[lo : lo + 2_000] for k, v in cols.items()}
        writer.write(view, ids[lo : lo + 2_000], part, T0)


def main(
    notes: int = typer.Option(5_000, help="Catalogue of the trained retriever."),
    users: int = typer.Option(2_000, help="Users of the trained models."),
    requests: int = typer.Option(400, help="/recommend calls measured."),
    sizes: str = typer.Option("10000,100000,1000000", help="Index catalogue sizes."),
    datasets: str = typer.Option("uniform,clustered", help="Vector sets of the index table."),
    http_requests: int = typer.Option(300, help="/recommend calls over HTTP (0: skip)."),
    concurrency: str = typer.Option(
        "", help="Concurrent clients against `streamrec serve`, e.g. 1,8,32 (empty: skip)."
    ),
    workers: str = typer.Option("1,2", help="`streamrec serve --workers` values to measure."),
    seconds: float = typer.Option(10.0, help="Load duration per (workers, clients) point."),
    rounds: int = typer.Option(2, help="Interleaved rounds of the scaling points (medians)."),
    retrieve_k: int = typer.Option(2_000, help="Two-tower candidates (merged: about as many)."),
    candidates: int = typer.Option(2_000, help="Merged candidates handed to the pre-ranker."),
    stats_max_age: float = typer.Option(
        -1.0, help="`prerank.stats_max_age_s` of the served settings (negative: the default)."
    ),
) -> None:
    """Print the index table, /recommend latency and the Feast peer."""
    OUT.mkdir(exist_ok=True)
    if sizes:
        console.rule("index type (d=32, k=1,000; recall@100 vs exact IndexFlatIP)")
        index_table([int(s) for s in sizes.split(",")], datasets.split(","))
    with bench_stack() as state, tempfile.TemporaryDirectory() as tmp:
        base = state.redis_url.rsplit("/", 1)[0]
        url = f"{base}/11"
        client = redis.Redis.from_url(url)
        project = f"bench{uuid.uuid4().hex[:6]}"
        console.rule(f"training models on {notes:,} notes")
        learn = LearnConfig(admit_after=1, batch_size=1024)
        snaps = SnapshotConfig(root=Path(tmp))
        ranker, retriever, _, _ = load_or_create(learn, snaps)
        cols = _samples(notes * 12, users, notes)
        train_pass(ranker, retriever, cols, learn)
        pre, _ = load_or_create_preranker(learn, snaps, ranker)
        prerank_pass(pre, cols, learn, teacher=ranker)  # the funnel's pre-ranking stage
        for name, st in (("ranker", ranker), ("retriever", retriever), ("preranker", pre)):
            tables, dense = st.full_state()
            SnapshotWriter(Path(tmp), name, snaps).publish_full(
                tables, dense, st.hwm_ms, st.meta({})
            )
        store = feature_store(url, project, Path(tmp))
        apply_definitions(store, Path(tmp))
        note_ids = sorted(set(cols.note_id))
        user_ids = [f"u{i}" for i in range(users)]
        _write_stats(client, project, "note_stats", note_ids)
        _write_stats(client, project, "user_stats", user_ids)
        ns = f"bench{uuid.uuid4().hex[:6]}"
        exposure = ExposureConfig(namespace=ns)
        rng = np.random.default_rng(9)
        shown_users = np.repeat(user_ids, 50).tolist()
        shown = [note_ids[j] for j in rng.integers(0, len(note_ids), len(shown_users))]
        ExposureWriter(client, exposure).add_batch(
            shown_users, shown, np.full(len(shown), T0 + 10**7)
        )
        prerank = {"candidates": candidates}
        if stats_max_age >= 0:
            prerank["stats_max_age_s"] = stats_max_age
        settings = load_settings(env={"REDIS_URL": url}).model_copy(
            update={
                "snapshots": snaps,
                "exposure": exposure,
                "feast_project": project,
                "serving": ServingConfig(
                    retrieve_k=retrieve_k,
                    rank_k=200,
                    prerank=PrerankConfig(**prerank),
                ),
            }
        )
        if concurrency:
            config = Path(tmp) / "serve.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "feast_project": project,
                        "snapshots": {"root": tmp},
                        "exposure": {"namespace": ns},
                        "serving": {
                            "retrieve_k": retrieve_k,
                            "rank_k": 200,
                            "prerank": prerank,
                        },
                        "redis": {"url": url},
                        "kafka": {"bootstrap": state.bootstrap},
                    }
                )
            )
            scaling(
                config,
                Path(tmp),
                user_ids,
                [int(c) for c in concurrency.split(",")],
                [int(w) for w in workers.split(",")],
                seconds,
                rounds,
            )
        torch.set_num_threads(1)  # as `streamrec serve` runs (per-request batches are small)
        service = service_for(settings, url)
        app, watcher = service.app, service.watcher
        watcher.refresh()
        tune_gc()  # as `streamrec serve` does once its first snapshots are loaded
        api = TestClient(app)
        console.rule(
            f"/recommend (in-process ASGI, retrieve {retrieve_k:,}, pre-rank {candidates:,}, "
            "rank 200)"
        )
        for u in user_ids[:20]:  # warm-up
            api.get("/recommend", params={"user_id": u, "n": 20})
        latencies, steps, merged, collector = [], [], [], []
        gc_clock = _CollectorClock()
        gc.callbacks.append(gc_clock)
        t_all, cpu_all, redis_all = time.perf_counter(), time.process_time(), _redis_cpu(client)
        for i in track(range(requests), description="requests", console=console):
            t0, g0 = time.perf_counter(), gc_clock.total
            r = api.get("/recommend", params={"user_id": user_ids[i % users], "n": 20})
            latencies.append((time.perf_counter() - t0) * 1000)
            collector.append((gc_clock.total - g0) * 1000)
            body = r.json()
            assert body["retrieved"] == retrieve_k and body["ranked"] == 200, body
            steps.append(body["timings_ms"])
            merged.append(body["stages"]["merged"])
        rps = requests / (time.perf_counter() - t_all)
        cpu_ms = (time.process_time() - cpu_all) * 1000 / requests
        redis_ms = (_redis_cpu(client) - redis_all) * 1000 / requests
        gc.callbacks.remove(gc_clock)
        console.print(
            f"/recommend latency p50 {percentile(latencies, 50):.1f} ms  p99 "
            f"{percentile(latencies, 99):.1f} ms  {rps:,.0f} requests/s (one client, serial)"
        )
        console.print(
            f"CPU per request: this process {cpu_ms:.1f} ms (TestClient and the app), Redis "
            f"{redis_ms:.1f} ms (`INFO cpu` of the whole server: exact when no one else uses it)"
        )
        console.print(
            f"cyclic collector: {sum(collector):,.0f} ms over {requests} requests, at most "
            f"{max(collector):.1f} ms in one; {sum(c > 5 for c in collector)} requests over 5 ms"
        )
        console.print(
            f"merged candidates per request: median {median(merged):,.0f} "
            f"(min {min(merged):,}, max {max(merged):,}), pre-ranked to 200"
        )
        for step in steps[0]:
            console.print(
                f"  {step:9} p50 {median([s[step] for s in steps]):6.2f} ms  "
                f"p99 {percentile([s[step] for s in steps], 99):6.2f} ms"
            )
        if http_requests:
            _over_http(app, user_ids, http_requests)
        console.rule("peer: Feast get_online_features for the same 200 notes")
        refs = [f"note_stats:{n}" for n in STAT_FEATURES]
        feast_ms, ours_ms = [], []
        ours = FeatureClient(client, project)
        for i in range(60):
            sample = [note_ids[j] for j in rng.integers(0, len(note_ids), 200)]
            t0 = time.perf_counter()
            store.get_online_features(features=refs, entity_rows=[{"note_id": n} for n in sample])
            feast_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            ours.read("note_stats", sample, STAT_FEATURES)
            ours_ms.append((time.perf_counter() - t0) * 1000)
            if i == 0:
                feast_ms.clear()
                ours_ms.clear()
        console.print(
            f"200 notes x {len(STAT_FEATURES)} counts: Feast get_online_features p50 "
            f"{median(feast_ms):.1f} ms; streamrec FeatureClient p50 {median(ours_ms):.2f} ms "
            f"({median(feast_ms) / median(ours_ms):.1f}x); whole /recommend p50 "
            f"{percentile(latencies, 50):.1f} ms"
        )
        _plot(latencies)
        client.flushdb()


def _redis_cpu(client: redis.Redis) -> float:
    """CPU seconds the Redis server has used (user + system, all its threads)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class _CollectorClock:
    """A `gc.callbacks` entry that sums the wall time of the cyclic collector's runs."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0

    def __call__(self, phase: str, _info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._start


def _over_http(app, user_ids: list[str], requests: int) -> None:
    """/recommend over a socket: uvicorn in a thread, one keep-alive httpx client, serial."""
    import socket
    import threading

    import httpx
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    console.rule("/recommend over HTTP (uvicorn, one keep-alive client, serial)")
    latencies = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            for u in user_ids[:20]:  # warm-up
                http.get("/recommend", params={"user_id": u, "n": 20})
            t_all = time.perf_counter()
            for i in track(range(requests), description="requests", console=console):
                t0 = time.perf_counter()
                r = http.get("/recommend", params={"user_id": user_ids[i % len(user_ids)], "n": 20})
                latencies.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
            rps = requests / (time.perf_counter() - t_all)
    finally:
        server.should_exit = True
        thread.join(10)
    console.print(
        f"/recommend over HTTP p50 {percentile(latencies, 50):.1f} ms  p99 "
        f"{percentile(latencies, 99):.1f} ms  {rps:,.0f} requests/s (one client, serial)"
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(config: Path, data_dir: Path, workers: int) -> tuple[subprocess.Popen, str]:
    """`streamrec serve --workers` as its own process; returns it and its base URL once every
    worker answers /healthz (each worker loads the snapshots itself)."""
    import httpx

    port = _free_port()
    env = {**os.environ, "STREAMREC_DATA_DIR": str(data_dir)}
    for name in ("STREAMREC_CONFIG", "KAFKA_BOOTSTRAP", "REDIS_URL"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "infra.cli", "serve", "--port", str(port)]
    cmd += ["--workers", str(workers), "--config", str(config)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline, ready = time.monotonic() + 600, 0  # minutes on a saturated machine
    with httpx.Client(base_url=base, timeout=5) as http:
        while ready < 4 * workers:  # consecutive answers: every worker is likely up
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop_server(proc)
                raise RuntimeError(f"`streamrec serve --workers {workers}` did not come up")
            try:
                ok = http.get("/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            ready = ready + 1 if ok else 0
            time.sleep(0.25)
    return proc, base


def _stop_server(proc: subprocess.Popen) -> None:
    stop([proc], signal.SIGTERM, grace_s=20)


async def _load(base: str, users: list[str], clients: int, seconds: float) -> dict:
    """`clients` keep-alive clients calling /recommend back to back for `seconds`."""
    import httpx

    latencies: list[float] = []
    refused = errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as http:
        for u in users[:clients]:  # warm-up: one connection per client
            await http.get("/recommend", params={"user_id": u, "n": 20})
        until = time.perf_counter() + seconds

        async def client(k: int) -> None:
            nonlocal refused, errors
            i = k
            while time.perf_counter() < until:
                t0 = time.perf_counter()
                try:
                    r = await http.get(
                        "/recommend", params={"user_id": users[i % len(users)], "n": 20}
                    )
                except httpx.HTTPError:  # a dropped connection: counted, the client goes on
                    errors += 1
                    i += clients
                    continue
                ms = (time.perf_counter() - t0) * 1000
                if r.status_code == 200:
                    latencies.append(ms)
                elif r.status_code == 503:
                    refused += 1
                else:
                    errors += 1
                i += clients

        t0 = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.perf_counter() - t0
    return {
        "rps": len(latencies) / elapsed,
        "p50": percentile(latencies, 50) if latencies else float("nan"),
        "p99": percentile(latencies, 99) if latencies else float("nan"),
        "refused": refused,
        "errors": errors,
        "ok": len(latencies),
    }


def scaling(
    config: Path,
    data_dir: Path,
    users: list[str],
    clients: list[int],
    workers: list[int],
    seconds: float,
    rounds: int = 2,
) -> list[dict]:
    """Throughput and latency of `streamrec serve --workers W` at each client count.

    Every server runs for the whole measurement (idle while another is loaded) and the points
    are taken interleaved, `rounds` times: (W1, C1), (W2, C1), (W1, C2), ... so that a change
    of the machine's load hits every configuration alike; the medians over the rounds are kept.
    """
    console.rule(
        f"streamrec serve --workers {workers} x clients {clients}, {seconds:g} s each, "
        f"{rounds} rounds interleaved"
    )
    servers = {}
    try:
        for w in workers:
            servers[w] = _start_server(config, data_dir, w)
        raw: dict[tuple[int, int], list[dict]] = {}
        for k in range(rounds):
            for c in clients:
                for w in workers:
                    r = asyncio.run(_load(servers[w][1], users, c, seconds))
                    raw.setdefault((w, c), []).append(r)
                    console.print(
                        f"round {k + 1} workers {w} clients {c:3}: {r['rps']:7.1f} requests/s  "
                        f"p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms  503s {r['refused']:5}  "
                        f"errors {r['errors']}"
                    )
    finally:
        for proc, _ in servers.values():
            _stop_server(proc)
    rows = []
    for (w, c), runs in raw.items():
        rows.append(
            {
                "workers": w,
                "clients": c,
                **{f: median([r[f] for r in runs]) for f in ("rps", "p50", "p99")},
                "refused": sum(r["refused"] for r in runs),
                "errors": sum(r["errors"] for r in runs),
                "ok": sum(r["ok"] for r in runs),
            }
        )
    peer = next(r for r in rows if r["workers"] == workers[0] and r["clients"] == clients[0])
    console.rule(f"medians of {rounds} rounds")
    for r in sorted(rows, key=lambda r: (r["workers"], r["clients"])):
        console.print(
            f"workers {r['workers']} clients {r['clients']:3}: {r['rps']:7.1f} requests/s "
            f"({r['rps'] / peer['rps']:.2f}x {peer['workers']} worker(s) at {peer['clients']} "
            f"client(s))  p50 {r['p50']:7.1f} ms  p99 {r['p99']:7.1f} ms  503s {r['refused']} "
            f"of {r['refused'] + r['ok'] + r['errors']}"
        )
    for c in clients:
        by = {r["workers"]: r for r in rows if r["clients"] == c}
        if len(workers) > 1:
            console.print(
                f"clients {c:3}: {workers[-1]} workers / {workers[0]} = "
                f"{by[workers[-1]]['rps'] / by[workers[0]]['rps']:.2f}x throughput"
            )
    _plot_scaling(rows)
    return rows


def _plot_scaling(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for w in sorted({r["workers"] for r in rows}):
        mine = sorted((r for r in rows if r["workers"] == w), key=lambda r: r["clients"])
        xs = [r["clients"] for r in mine]
        left.plot(xs, [r["rps"] for r in mine], marker="o", label=f"{w} worker(s)")
        right.plot(xs, [r["p99"] for r in mine], marker="o", label=f"{w} worker(s)")
    left.set(xscale="log", xlabel="concurrent clients", ylabel="requests/s")
    right.set(xscale="log", xlabel="concurrent clients", ylabel="p99 latency (ms)")
    left.legend()
    fig.tight_layout()
    fig.savefig(OUT / "serving_scaling.png", dpi=110)
    plt.close(fig)


def _plot(latencies: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(latencies, bins=50)
    ax.axvline(percentile(latencies, 99), color="tab:red", label="p99")
    ax.set_xlabel("/recommend latency (ms), ~2,000 merged / pre-ranked to 200")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "serving_latency.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    typer.run(main)
