"""The stats job's throughput (Kafka -> Redis), freshness through Feast, and the online writer.

Run: `.venv/bin/python -m bench.stats [--events N] [--reps R] [--fresh-seconds S] [--processes 1,2]
[--redis-cluster]`.

1. Sustained events/s: N synthetic events are produced to a fresh 4-partition topic, then
   `streamrec run stats --until-end` (1 process, then 2) reads them all, writes Feast (Redis) and
   exits. The same command on an empty topic gives the fixed start-up and shutdown cost, which is
   subtracted: net events/s = N / (wall - empty wall). Both figures are printed.
2. Freshness (R runs): the job runs unbounded while events are produced at 10k events/s; for
   one event every 20 ms, the time from its produce call to the moment
   `FeatureStore.get_online_features` shows its user's counts including it (p50 / p99, medians
   of the runs; PNG histogram in bench/out/). Every probe counts; the figure as the client
   before 2026-12-07 counted it (a user's probe only while none of it was pending, ~1 in 10 of
   them) is printed beside it, with what shows the client kept up (its produce loop's delay
   behind schedule, its prober's read time).
3. The online writer against Feast's `store.push()` on the same rows (bench/online_writer.py).

`--redis-cluster`: 1. and 2. on a single Redis and on a local 3-master Redis Cluster (both the
bench's own, same settings; the repetitions alternate between them), printed side by side with
the same-run ratios cluster / single.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import redis
import typer
import yaml
from rich.console import Console
from rich.progress import Progress

from bench import online_writer
from bench.common import (
    bench_stack,
    fresh_topic,
    median,
    percentile,
    print_pair,
    produce_all,
    redis_pair,
)
from features.store import apply_definitions, feature_store
from features.windows import METRICS, TYPE_METRIC
from streams.kafka_io import make_producer
from streams.replay import encoded_batches
from streams.sources.synthetic import SyntheticConfig, SyntheticSource

console = Console()
CLI = Path(sys.executable).with_name("streamrec")
OUT = Path(__file__).resolve().parent / "out"
BENCH_DB = 12  # a Redis DB of its own, flushed at the end
TYPE_COUNTS_30D = [f"{METRICS[i]}_30d" for i in TYPE_METRIC.values()]
"""The 30-day count of each event type (their sum counts every event of a user)."""


def _config(tmp: Path, topic: str) -> tuple[Path, str]:
    project = f"bench{uuid.uuid4().hex[:6]}"
    data = {
        "kafka": {"topics": {"interactions": topic, "dlq": f"{topic}.dlq"}},
        "feast_project": project,
        "data_dir": str(tmp / "data"),
    }
    path = tmp / f"{project}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, project


def _env(bootstrap: str, redis_url: str) -> dict[str, str]:
    """The jobs' environment: this stack; their data directory comes from `_config`'s file."""
    env = {**os.environ, "KAFKA_BOOTSTRAP": bootstrap, "REDIS_URL": redis_url}
    env.pop("STREAMREC_DATA_DIR", None)
    return env


def _timed_run(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run([str(CLI), *args], env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"stats job failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - start


def throughput(
    state, urls: dict[str, str], tmp: Path, events: int, reps: int, counts: tuple[int, ...]
) -> dict[str, dict[int, tuple[float, float]]]:
    """Redis kind -> processes -> (median gross events/s, median net events/s); the kinds
    (`urls`) take turns within each repetition, so they share the machine's moments alike."""
    keys, values = [], []
    for k, v, *_ in encoded_batches(SyntheticSource(limit=events)):
        keys += k
        values += v
    runs: dict[tuple[str, int], tuple[list[float], list[float]]] = {
        (kind, processes): ([], []) for kind in urls for processes in counts
    }
    with Progress(console=console) as progress:
        task = progress.add_task("stats job throughput", total=len(runs) * reps)
        for _ in range(reps):
            for (kind, processes), (gross, net) in runs.items():
                env = _env(state.bootstrap, urls[kind])
                empty = fresh_topic(state.bootstrap, "bench-stats-empty")
                config, _ = _config(tmp, empty)
                args = ["run", "stats", "--until-end", "--processes", str(processes)]
                fixed = _timed_run([*args, "--config", str(config)], env)
                topic = fresh_topic(state.bootstrap, "bench-stats")
                produce_all(make_producer(state.bootstrap), topic, keys, values)
                config, _ = _config(tmp, topic)
                wall = _timed_run([*args, "--config", str(config)], env)
                gross.append(events / wall)
                net.append(events / max(wall - fixed, 1e-9))
                progress.advance(task)
    out: dict[str, dict[int, tuple[float, float]]] = {kind: {} for kind in urls}
    for (kind, processes), (gross, net) in runs.items():
        out[kind][processes] = (median(gross), median(net))
    return out


@dataclass
class _Probe:
    """One event whose visibility is awaited: its user's event count once it is in, when it was
    produced, and whether the rule of the client before 2026-12-07 would have registered it."""

    user: str
    need: int
    sent: float
    first: bool
    """No earlier probe of its user was pending: the old client registered only these."""


@dataclass(frozen=True)
class Freshness:
    """Produce -> visible delays (ms) of one freshness run, and how well the client kept up."""

    delays: list[float]
    """Every probe (one per 20 ms); a probe never seen within the wait enters with its wait."""
    first_only: list[float]
    """The subset the old client measured (a user's probe only if none of it was pending)."""
    lost: int
    """Probes not visible when the client stopped waiting (30 s after the last produce)."""
    read_ms_p99: float
    """99th percentile of one `get_online_features` call of the prober (all pending users)."""
    users_max: int
    """Most distinct users read by one call."""
    produce_late_ms: float
    """Most the produce loop ran behind its 10k events/s schedule."""


def freshness(
    state, redis_url: str, tmp: Path, seconds: float, rate: float = 10_000.0
) -> Freshness:
    """Produce at `rate` for `seconds`; every 20 ms the time from one event's produce call until
    `get_online_features` shows its user's counts including it."""
    topic = fresh_topic(state.bootstrap, "bench-fresh")
    config, project = _config(tmp, topic)
    env = _env(state.bootstrap, redis_url)
    job = subprocess.Popen(
        [str(CLI), "run", "stats", "--config", str(config)],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = feature_store(redis_url, project, tmp)
    apply_definitions(store, tmp)
    world = SyntheticConfig(users=20_000, notes=50_000)
    total = int(seconds * rate)
    batches = list(encoded_batches(SyntheticSource(world, limit=total + 20_000)))
    keys = [k for b in batches for k in b[0]]
    values = [v for b in batches for v in b[1]]
    warm = 20_000  # events produced first, so the job is up and running when probes start
    produce_all(make_producer(state.bootstrap), topic, keys[:warm], values[:warm])
    seen: dict[str, int] = defaultdict(int)
    for k in keys[:warm]:
        seen[k.decode()] += 1
    _wait_visible(store, {keys[warm - 1].decode(): seen[keys[warm - 1].decode()]}, 120)

    # Every probe is kept: the client before 2026-12-07 dropped a probe whose user had one
    # pending, and the synthetic users' activity is skewed, so it kept ~1 in 10 (`first`).
    probes: list[_Probe] = []
    first_pending: set[str] = set()
    delays: list[float] = []
    first_only: list[float] = []
    reads: list[tuple[float, int]] = []
    lock = threading.Lock()
    done = threading.Event()

    def prober() -> None:
        while not done.is_set():
            with lock:
                pending = list(probes)
            if not pending:
                time.sleep(0.002)
                continue
            users = list(dict.fromkeys(p.user for p in pending))
            start = time.perf_counter()
            got = store.get_online_features(
                features=[f"user_stats:{f}" for f in TYPE_COUNTS_30D],
                entity_rows=[{"user_id": u} for u in users],
            ).to_dict()
            now = time.perf_counter()
            reads.append((now - start, len(users)))
            count = {u: sum(got[f][i] or 0 for f in TYPE_COUNTS_30D) for i, u in enumerate(users)}
            seen_now = [p for p in pending if count[p.user] >= p.need]
            with lock:
                for p in seen_now:
                    probes.remove(p)
                    if p.first:
                        first_pending.discard(p.user)
            for p in seen_now:
                delays.append((now - p.sent) * 1000)
                if p.first:
                    first_only.append(delays[-1])

    thread = threading.Thread(target=prober)
    thread.start()
    producer = make_producer(state.bootstrap, **{"linger.ms": 1})
    chunk = int(rate / 100)  # every 10 ms
    start = time.perf_counter()
    next_probe = start
    late = 0.0
    with Progress(console=console) as progress:
        task = progress.add_task("freshness at 10k events/s", total=total)
        for lo in range(warm, warm + total, chunk):
            for i in range(lo, lo + chunk):
                producer.produce(topic, values[i], keys[i])
                seen[keys[i].decode()] += 1
            now = time.perf_counter()
            if now >= next_probe:
                user = keys[lo + chunk - 1].decode()
                with lock:
                    first = user not in first_pending
                    probes.append(_Probe(user, seen[user], now, first))
                    first_pending.add(user)
                next_probe = now + 0.02
            producer.poll(0)
            progress.advance(task, chunk)
            due = start + (lo + chunk - warm) / rate
            delay = due - time.perf_counter()
            late = max(late, -delay)
            if delay > 0:
                time.sleep(delay)
    producer.flush(30)
    deadline = time.monotonic() + 30
    while probes and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    thread.join()
    given_up = time.perf_counter()
    for p in probes:  # never seen: they enter with the time waited, a lower bound
        delays.append((given_up - p.sent) * 1000)
        if p.first:
            first_only.append(delays[-1])
    os.killpg(job.pid, signal.SIGTERM)
    job.wait(30)
    if probes:
        console.print(f"[red]{len(probes)} probes never became visible within 30 s[/red]")
    return Freshness(
        delays,
        first_only,
        len(probes),
        percentile([r * 1000 for r, _ in reads], 99),
        max(n for _, n in reads),
        late * 1000,
    )


def _print_freshness(runs: list[Freshness], seconds: float) -> None:
    """Medians over the runs of every probe's p50 / p99, the old client's figure beside them,
    and what says the client kept up."""

    def line(pick: Callable[[Freshness], list[float]]) -> str:
        p50 = median([percentile(pick(run), 50) for run in runs])
        p99s = [percentile(pick(run), 99) for run in runs]
        each = ", ".join(f"{p:,.0f}" for p in p99s)
        probes = median([len(pick(run)) for run in runs])
        return (
            f"p50 {p50:,.0f} ms, p99 {median(p99s):,.0f} ms (runs: {each}; ~{probes:,.0f} probes)"
        )

    console.print(
        f"freshness at 10k events/s, {seconds:g} s, medians of {len(runs)} run(s): "
        f"{line(lambda run: run.delays)}; target p99 <= 500 ms"
    )
    console.print(
        "  the same runs counted as the client before 2026-12-07 did (a user's probe only while "
        f"none of it was pending): {line(lambda run: run.first_only)}"
    )
    console.print(
        "  client: produce loop at most "
        f"{max(run.produce_late_ms for run in runs):,.0f} ms behind schedule; prober read p99 "
        f"{max(run.read_ms_p99 for run in runs):,.1f} ms (at most "
        f"{max(run.users_max for run in runs)} users a call); probes never visible: "
        f"{sum(run.lost for run in runs)}"
    )
    console.print(f"plot (last run): {_plot(runs[-1].delays)}")


def _wait_visible(store, need: dict[str, int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        users = list(need)
        got = store.get_online_features(
            features=[f"user_stats:{f}" for f in TYPE_COUNTS_30D],
            entity_rows=[{"user_id": u} for u in users],
        ).to_dict()
        counts = [sum(got[f][i] or 0 for f in TYPE_COUNTS_30D) for i in range(len(users))]
        if all(c >= need[u] for c, u in zip(counts, users, strict=True)):
            return
        time.sleep(0.05)
    raise RuntimeError("the stats job did not make the warm-up events visible")


def _plot(delays: list[float]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(delays, bins=60, color="#4477aa")
    for q, style in ((50, "--"), (99, ":")):
        ax.axvline(percentile(delays, q), color="k", linestyle=style, label=f"p{q}")
    ax.set_xlabel("event produced -> visible through Feast (ms)")
    ax.set_ylabel("probes")
    ax.set_title("stats job freshness at 10k events/s")
    ax.legend()
    path = OUT / "stats_freshness.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


@contextmanager
def _redis_urls(state, cluster: bool) -> Iterator[dict[str, str]]:
    """The stack's Redis (DB `BENCH_DB`, flushed at the end); with `cluster`, a single Redis
    and a 3-master cluster of the bench's own (`bench.common.redis_pair`)."""
    if cluster:
        with redis_pair(cluster=True) as urls:
            yield urls
        return
    url = state.redis_url.rsplit("/", 1)[0] + f"/{BENCH_DB}"
    client = redis.Redis.from_url(url)
    try:
        yield {"single": url}
    finally:
        client.flushdb()
        client.close()


def main(
    events: int = 300_000,
    reps: int = 3,
    fresh_seconds: float = 30.0,
    only: str = "throughput,freshness,writer",
    processes: Annotated[
        str, typer.Option(help="Comma-separated process counts of the throughput runs.")
    ] = "1,2",
    redis_cluster: Annotated[
        bool,
        typer.Option(
            help="Run the job on a single Redis and on a local 3-master Redis Cluster (both "
            "the bench's own, same settings) and print both, with the ratios."
        ),
    ] = False,
) -> None:
    """Measure and print the figures (`--only` picks a comma-separated subset)."""
    parts = set(only.split(","))
    rates: dict[str, dict[int, tuple[float, float]]] = {}
    fresh: dict[str, list[Freshness]] = {}
    with (
        bench_stack() as state,
        tempfile.TemporaryDirectory() as tmp_dir,
        _redis_urls(state, redis_cluster) as urls,
    ):
        tmp = Path(tmp_dir)
        if "throughput" in parts:
            counts = tuple(int(p) for p in processes.split(","))
            rates = throughput(state, urls, tmp, events, reps, counts)
        if "freshness" in parts:
            fresh = {kind: [] for kind in urls}
            for _ in range(reps):
                for kind, url in urls.items():
                    fresh[kind].append(freshness(state, url, tmp, fresh_seconds))
    for count, (gross, net) in rates.get("single", {}).items():
        console.print(
            f"stats job, {count} process(es): {net:,.0f} events/s net of start-up "
            f"({gross:,.0f} gross, {events:,} events; medians of {reps}; target >= 50,000/process)"
        )
    if fresh:
        _print_freshness(fresh["single"], fresh_seconds)
    if redis_cluster:
        figures: dict[str, dict[str, float]] = {kind: {} for kind in urls}
        for kind, by_processes in rates.items():
            for count, (gross, net) in by_processes.items():
                figures[kind][f"{count} process(es), events/s net"] = net
                figures[kind][f"{count} process(es), events/s gross"] = gross
        for kind, runs in fresh.items():
            for q in (50, 99):
                figures[kind][f"freshness at 10k events/s, p{q} ms"] = median(
                    [percentile(run.delays, q) for run in runs]
                )
        print_pair(figures, "stats job: single Redis vs 3-master Redis Cluster, same run")
    if "writer" in parts:
        online_writer.main()


if __name__ == "__main__":
    typer.run(main)
