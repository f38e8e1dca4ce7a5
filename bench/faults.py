"""Faults of issue 13, each run against a ground truth: values wrong, events lost or counted twice.

Run: `.venv/bin/python -m bench.faults [--events N] [--kills K] [--requests R] [--only ...]`.

The ground truth is `streams.reference.expected_features(valid events, view)` (pandas); the
values are read back through Feast (`features.store.online_features`). Per fault:

1. poison events (future, outlier, overflow, duplicates): synthetic events of a 2003 replay with
   the bad ones injected, produced to a fresh topic, then `streamrec run stats --until-end`.
   Values wrong = entities x features differing from the oracle over the valid events; events
   lost / counted twice = per user, the 30-day count of every event type below / above the
   oracle's (summed). Every injected bad event must be on the DLQ (matched by its bytes).
2. kill -9 of the stats job (1 and 2 processes): per kill a chunk of events is replayed (paced)
   while the job runs; once the replay has produced a seeded random fraction of the chunk, the
   job's process group is killed and the job restarted at once on the same `--recovery-dir`;
   the values are compared with the oracle over every event produced so far. Time to recover =
   restart -> the job's mark at the chunk's end and Feast equal to the oracle.
3. Redis lost its data after a run (the project's keys deleted, as a Redis restarted without
   persistence): `streamrec features rebuild --from kafka`, then compared.
4. serving with Redis hung (a listener that never answers): R `/recommend` requests, how many
   answered within 2x the deadline (3 x `ServingConfig.redis_timeout_s`), and the status codes
   of /healthz, /readyz, /metrics.

Faults other work in progress covers print as "not measured here yet". The table is printed and
written to bench/out/faults.md.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
import numpy as np
import pandas as pd
import redis
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.common import bench_stack, fresh_topic, median, produce_all
from bench.stats import CLI, OUT, TYPE_COUNTS_30D, _config, _env
from features.schema import ENTITY_KEY
from features.store import apply_definitions, feature_store, online_features
from infra import stack
from streams.events import Event, decode_dead_letter, encode_event
from streams.kafka_io import make_producer, read_to_end
from streams.reference import expected_features
from streams.replay import replay
from streams.sources import ListSource
from streams.sources.synthetic import SyntheticConfig, SyntheticSource
from streams.summary import summarize_dead_letters
from tests.streams.helpers import Job, recoverable_run, start_job, wait_for

console = Console(width=200)
BENCH_DB = 10  # a Redis DB of its own (bench.stats uses 12, the tests 13-15), flushed at the end
WORLD = SyntheticConfig(
    seed=13, users=150, notes=400, request_gap_ms=30_000.0, start_ms=1_041_379_200_000
)
"""A 2003 replay (2003-01-01), a request every 30 s: the events span about a day per 8k."""
YEAR_MS = 365 * 86_400_000
FUTURE_TS = 4_102_444_800_000  # 2100-01-01
VIEWS = ("user_stats", "note_stats")
PENDING = [
    ("broker restarted (topics lost, recovery offsets)", "broker restart: other work in progress"),
    ("learner disk full between the two publishes", "atomic commit: other work in progress"),
    ("kill -9 of the exposure job", "other work in progress"),
    ("kill -9 of the sample joiner", "other work in progress"),
    ("kill -9 of learn online", "other work in progress"),
]


@dataclass
class Row:
    """One line of the table."""

    fault: str
    runs: int | None = None
    wrong: int | None = None
    lost: int | None = None
    twice: int | None = None
    recover_s: float | None = None
    notes: str = ""

    def cells(self) -> list[str]:
        if self.runs is None:
            why = f" ({self.notes})" if self.notes else ""
            return [self.fault, "-", "-", "-", "-", "-", f"not measured here yet{why}"]

        def num(v: int | None) -> str:
            return "-" if v is None else f"{v:,}"

        recover = "-" if self.recover_s is None else f"{self.recover_s:.1f} s"
        return [
            self.fault,
            num(self.runs),
            num(self.wrong),
            num(self.lost),
            num(self.twice),
            recover,
            self.notes,
        ]


HEADER = ["fault", "runs", "values wrong", "events lost", "counted twice", "time to recover", ""]


# -- ground truth -----------------------------------------------------------------------------
@dataclass
class Diff:
    wrong: int = 0
    lost: int = 0
    twice: int = 0
    missing: int = 0

    def __iadd__(self, other: Diff) -> Diff:
        for name in ("wrong", "lost", "twice", "missing"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


def compare(redis_url: str, project: str, reader_dir: Path, events: list[Event]) -> Diff:
    """Feast's values against the oracle over `events` (the valid ones)."""
    store = feature_store(redis_url, project, reader_dir)
    apply_definitions(store, reader_dir)
    out = Diff()
    for view in VIEWS:
        want = expected_features(events, view)
        ids = list(want.index)
        got = pd.DataFrame(online_features(store, view, ids)).set_index(ENTITY_KEY[view]).loc[ids]
        for column in want.columns:
            g = got[column].to_numpy(dtype=np.float64)
            w = want[column].to_numpy(dtype=np.float64)
            same = np.isclose(g, w, rtol=1e-12, atol=0.0, equal_nan=True)
            out.wrong += int((~same).sum())
        out.missing += int(got.isna().all(axis=1).sum())
        if view == "user_stats":  # every event has a user: its 30-day counts add up to it
            g = np.nan_to_num(got[TYPE_COUNTS_30D].to_numpy(np.float64)).sum(axis=1)
            w = want[TYPE_COUNTS_30D].to_numpy(np.float64).sum(axis=1)
            out.lost += int(np.clip(w - g, 0, None).sum())
            out.twice += int(np.clip(g - w, 0, None).sum())
    return out


# -- shared plumbing --------------------------------------------------------------------------
@dataclass
class Ctx:
    state: stack.StackState
    redis_url: str
    tmp: Path
    seed: int

    @property
    def env(self) -> dict[str, str]:
        return _env(self.state.bootstrap, self.redis_url)

    def topic(self, prefix: str) -> tuple[str, Path, str]:
        """A fresh topic with its DLQ; its settings file and Feast project."""
        topic = fresh_topic(self.state.bootstrap, prefix)
        stack.ensure_topics(self.state.bootstrap, [f"{topic}.dlq"], 4)
        config, project = _config(self.tmp, topic)
        return topic, config, project

    @property
    def reader_dir(self) -> Path:
        return self.tmp / "reader"


def synthetic(limit: int) -> list[Event]:
    return [e for b in SyntheticSource(WORLD, limit=limit).batches() for e in b]


def run_cli(args: list[str], env: dict[str, str], timeout: float = 600) -> float:
    """Run `streamrec <args>`; its wall time (fails with its output unless it exits 0)."""
    start = time.perf_counter()
    done = subprocess.run(
        [str(CLI), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"streamrec {args[:2]} failed: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        )
    return time.perf_counter() - start


# -- 1. poison events -------------------------------------------------------------------------
def _as_json(event: Event, **changes: object) -> bytes:
    data = msgspec.json.decode(encode_event(event))
    data.update(changes)
    return msgspec.json.encode(data)


def _poisoned(kind: str, events: list[Event], rng: random.Random) -> tuple[list, list, int]:
    """(keys, values) of `events` with bad ones of `kind` injected; the bad values; how many."""
    keys = [e.user_id.encode() for e in events]
    values = [encode_event(e) for e in events]
    bad: list[tuple[int, bytes, bytes]] = []  # (insert before index, key, value)
    n = len(events)
    if kind == "future":  # ts 2100-01-01, fresh ids, spread over the stream
        for j, i in enumerate(sorted(rng.sample(range(n // 10, n), 5))):
            e = events[i]
            bad.append((i, keys[i], _as_json(e, ts=FUTURE_TS, event_id=f"future-{j}")))
    elif kind == "outlier":  # ts + 10 years inside the 2003 replay (still in the past)
        for j, i in enumerate((n // 4, n // 2, 3 * n // 4)):
            e = events[i]
            bad.append((i, keys[i], _as_json(e, ts=e.ts + 10 * YEAR_MS, event_id=f"out-{j}")))
    elif kind == "overflow":  # watch_ms = 2^63, and two plays of 2^62 by one user
        plays = [i for i in range(n // 10, n) if events[i].type == "play"]
        i, k = rng.sample(plays, 2)
        bad.append((i, keys[i], _as_json(events[i], watch_ms=2**63, event_id="ovf-63")))
        for j in range(2):
            bad.append((k, keys[k], _as_json(events[k], watch_ms=2**62, event_id=f"ovf-62-{j}")))
    elif (
        kind == "duplicates"
    ):  # the same bytes sent again, 1 to 60 events later (within the lateness)
        for i in sorted(rng.sample(range(n - 200), 50)):
            bad.append((i + rng.randint(1, 60), keys[i], values[i]))
    bad.sort(key=lambda b: b[0])
    out_k, out_v = [], []
    at = 0
    for i, k, v in bad:
        out_k += keys[at:i]
        out_v += values[at:i]
        out_k.append(k)
        out_v.append(v)
        at = i
    out_k += keys[at:]
    out_v += values[at:]
    return out_k, out_v, [v for _, _, v in bad]


def poison(ctx: Ctx, events: int, progress: Progress) -> list[Row]:
    valid = synthetic(events)
    rng = random.Random(ctx.seed)
    rows = []
    kinds = ("future", "outlier", "overflow", "duplicates")
    task = progress.add_task("poison events", total=len(kinds))
    for kind in kinds:
        topic, config, project = ctx.topic(f"faults-{kind}")
        keys, values, bad = _poisoned(kind, valid, rng)
        produce_all(make_producer(ctx.state.bootstrap), topic, keys, values)
        wall = run_cli(["run", "stats", "--until-end", "--config", str(config)], ctx.env)
        diff = compare(ctx.redis_url, project, ctx.reader_dir, valid)
        letters: Counter = Counter()
        for batch in read_to_end(ctx.state.bootstrap, f"{topic}.dlq", idle_timeout=10.0):
            for record in batch:
                letters[decode_dead_letter(record.value).original] += 1
        caught = sum(min(c, letters[v]) for v, c in Counter(bad).items())
        reasons = summarize_dead_letters(ctx.state.bootstrap, f"{topic}.dlq")
        extra = sum(reasons.values()) - caught
        by_reason = ", ".join(f"{r}/{f}: {c}" for (r, f), c in sorted(reasons.items()))
        rows.append(
            Row(
                f"poison: {kind}",
                1,
                diff.wrong,
                diff.lost,
                diff.twice,
                None,
                f"{len(valid):,} valid events; {caught} of {len(bad)} bad ones dead-lettered "
                f"({by_reason}); {extra} other dead letters; run {wall:.1f} s",
            )
        )
        progress.advance(task)
    return rows


# -- 2. kill -9 of the stats job --------------------------------------------------------------
def _settle(ctx: Ctx, project: str, events: list[Event], timeout: float) -> Diff:
    """Poll Feast until it equals the oracle over `events` (or `timeout`); the last diff."""
    deadline = time.monotonic() + timeout
    while True:
        diff = compare(ctx.redis_url, project, ctx.reader_dir, events)
        if not (diff.wrong or diff.lost or diff.twice) or time.monotonic() > deadline:
            return diff
        time.sleep(0.1)


def kill_stats(
    ctx: Ctx, events: int, kills: int, processes: int, rate: float, progress: Progress
) -> Row:
    """One topic, one recovery store; the job runs unbounded. Per kill: replay a chunk (paced),
    kill -9 once the replay has produced a seeded random fraction of it, restart at once; time to
    recover = restart -> the job's mark at the chunk's last event and Feast equal to the oracle
    over every event produced so far."""
    all_events = synthetic(events)
    topic, config, project = ctx.topic(f"faults-kill{processes}")
    recovery = ctx.tmp / f"recovery-{topic}"
    job = Job(ctx.state.bootstrap, topic, config, ctx.env, ctx.redis_url, f"{project}:hwm:stats")
    args = recoverable_run("stats", config, recovery, "--processes", str(processes))
    bounds = np.linspace(0, len(all_events), kills + 2).astype(int)
    replay(ListSource(all_events[: bounds[1]], 1_000), job.bootstrap, job.topic)
    rng = random.Random(ctx.seed * 100 + processes)
    total, recover, points, during, bad = Diff(), [], [], 0, []
    task = progress.add_task(f"kill -9 stats, {processes} process(es)", total=kills)
    proc = start_job(args, job.env)
    try:
        wait_for(lambda: job.hwm() >= all_events[bounds[1] - 1].ts, 180, "the job to catch up")
        for k in range(kills):
            lo, hi = bounds[k + 1], bounds[k + 2]
            chunk = all_events[lo:hi]
            produced = [0]
            producer = threading.Thread(
                target=replay,
                args=(ListSource(chunk, 100), job.bootstrap, topic),
                kwargs={"rate": rate, "on_progress": lambda n, c=produced: c.append(c.pop() + n)},
            )
            producer.start()
            try:
                at = rng.uniform(0.05, 0.9)
                point = int(at * len(chunk))
                wait_for(
                    lambda p=point, c=produced: c[0] >= p, 180, "the replay to reach the point"
                )
                during += producer.is_alive()
                points.append(f"{at:.2f}")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
                start = time.perf_counter()
                proc = start_job(args, job.env)
            finally:
                producer.join()
            wait_for(lambda e=chunk[-1].ts: job.hwm() >= e, 300, "the restarted job to catch up")
            diff = _settle(ctx, project, all_events[:hi], 90.0)
            recover.append(time.perf_counter() - start)
            total += diff
            if diff.wrong or diff.lost or diff.twice:
                bad.append(f"kill {k + 1}: {diff.wrong} wrong, {diff.lost} lost after 90 s")
            progress.advance(task)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    return Row(
        f"kill -9 stats job, {processes} process(es)",
        kills,
        total.wrong,
        total.lost,
        total.twice,
        median(recover),
        f"{len(all_events):,} events in {kills + 1} chunks replayed at {rate:,.0f}/s; killed "
        f"when the replay had produced {' '.join(points)} of the chunks ({during} of {kills} "
        "while the replay ran), restarted at once on the same --recovery-dir; time = median "
        f"restart -> caught up and equal to the oracle (max {max(recover):.1f} s)"
        + "".join(f"; {b}" for b in bad),
    )


# -- 3. Redis lost its data -------------------------------------------------------------------
def redis_lost(ctx: Ctx, events: int, progress: Progress) -> Row:
    valid = synthetic(events)
    task = progress.add_task("Redis lost its data", total=3)
    topic, config, project = ctx.topic("faults-redis")
    replay(ListSource(valid, 1_000), ctx.state.bootstrap, topic)
    run_cli(["run", "stats", "--until-end", "--config", str(config)], ctx.env)
    before = compare(ctx.redis_url, project, ctx.reader_dir, valid)
    progress.advance(task)
    client = redis.Redis.from_url(ctx.redis_url)
    keys = [k for k in client.scan_iter(count=1_000) if project.encode() in k]
    client.delete(*keys)
    lost = compare(ctx.redis_url, project, ctx.reader_dir, valid)
    progress.advance(task)
    wall = run_cli(["features", "rebuild", "--from", "kafka", "--config", str(config)], ctx.env)
    after = compare(ctx.redis_url, project, ctx.reader_dir, valid)
    progress.advance(task)
    return Row(
        "Redis lost its data -> `streamrec features rebuild --from kafka`",
        1,
        after.wrong,
        after.lost,
        after.twice,
        wall,
        f"{len(valid):,} events; before the loss {before.wrong} wrong; {len(keys):,} keys "
        f"deleted -> {lost.missing:,} entities missing, {lost.lost:,} events lost; after the "
        "rebuild as shown",
    )


# -- 4. serving with Redis hung ---------------------------------------------------------------
def serving_hung(ctx: Ctx, requests: int, progress: Progress) -> Row:
    from fastapi.testclient import TestClient

    from learners.config import LearnConfig
    from serving.config import ServingConfig
    from serving.service import build_service
    from tests.learners.helpers import publish_trained

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)  # connections complete in the kernel; nothing ever reads them
    hung = f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    task = progress.add_task("serving, Redis hung", total=requests)
    try:
        config = ServingConfig()
        deadline = 3 * config.redis_timeout_s
        learn = LearnConfig()
        root = ctx.tmp / "serving-snapshots"
        publish_trained(root)
        svc = build_service(
            hung,
            f"p{uuid.uuid4().hex[:6]}",
            root,
            (learn.ranker_model, learn.retriever_model),
            config,
            f"x{uuid.uuid4().hex[:6]}",
        )
        svc.watcher.refresh()
        client = TestClient(svc.app)
        codes: Counter = Counter()
        took = []
        for i in range(requests):
            t0 = time.perf_counter()
            r = client.get("/recommend", params={"user_id": f"u{i}", "n": 10})
            took.append(time.perf_counter() - t0)
            degraded = r.status_code == 200 and r.json().get("features_degraded")
            codes["200 degraded" if degraded else str(r.status_code)] += 1
            progress.advance(task)
        probes = {p: client.get(p).status_code for p in ("/healthz", "/readyz", "/metrics")}
    finally:
        server.close()
    within = sum(t < 2 * deadline for t in took)
    honest = codes["503"] + codes["200 degraded"]
    ok_probes = probes == {"/healthz": 200, "/readyz": 503, "/metrics": 200}
    return Row(
        "serving with Redis hung",
        requests,
        (requests - honest) + (0 if ok_probes else 1),
        None,
        None,
        None,
        f"{within} of {requests} `/recommend` within 2x the deadline ({2 * deadline:.2f} s; "
        f"max {max(took):.3f} s), answers {dict(codes)}; "
        + ", ".join(f"{p} {c}" for p, c in probes.items()),
    )


# -- the table --------------------------------------------------------------------------------
def _markdown(rows: list[Row], command: str) -> str:
    lines = [
        f"`{command}` ({time.strftime('%Y-%m-%d')})",
        "",
        "| " + " | ".join(h or "notes" for h in HEADER) + " |",
        "|" + "|".join(["---"] + ["---:"] * 5 + ["---"]) + "|",
    ]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(
    events: Annotated[int, typer.Option(help="Synthetic events per poison / Redis run.")] = 12_000,
    kills: Annotated[int, typer.Option(help="kill -9 points per process count.")] = 10,
    kill_events: Annotated[int, typer.Option(help="Events replayed in the kill -9 runs.")] = 24_000,
    rate: Annotated[float, typer.Option(help="Replay pace (events/s), kill -9 runs.")] = 1_000.0,
    requests: Annotated[int, typer.Option(help="`/recommend` requests, Redis hung.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the kill points and injected events.")] = 13,
    only: Annotated[
        str, typer.Option(help="Comma-separated subset.")
    ] = "poison,kill,redis,serving",
) -> None:
    """Run the faults against the pandas oracle; print the table, write bench/out/faults.md."""
    parts = set(only.split(","))
    rows: list[Row] = []
    with bench_stack() as state, tempfile.TemporaryDirectory() as tmp_dir:
        redis_url = state.redis_url.rsplit("/", 1)[0] + f"/{BENCH_DB}"
        client = redis.Redis.from_url(redis_url)
        client.flushdb()
        ctx = Ctx(state, redis_url, Path(tmp_dir), seed)
        try:
            with Progress(console=console) as progress:
                if "poison" in parts:
                    rows += poison(ctx, events, progress)
                if "kill" in parts:
                    for processes in (1, 2):
                        rows.append(kill_stats(ctx, kill_events, kills, processes, rate, progress))
                if "redis" in parts:
                    rows.append(redis_lost(ctx, events, progress))
                if "serving" in parts:
                    rows.append(serving_hung(ctx, requests, progress))
        finally:
            client.flushdb()
    rows += [Row(fault, notes=note) for fault, note in PENDING]
    table = Table(*HEADER, title="faults against the pandas oracle")
    for row in rows:
        table.add_row(*row.cells())
    console.print(table)
    command = (
        f"python -m bench.faults --events {events} --kills {kills} --kill-events {kill_events} "
        f"--rate {rate:g} --requests {requests} --seed {seed}"
    )
    if parts != {"poison", "kill", "redis", "serving"}:
        command += f" --only {only}"
    OUT.mkdir(exist_ok=True)
    path = OUT / "faults.md"
    path.write_text(_markdown(rows, command))
    console.print(f"table: {path}")


if __name__ == "__main__":
    typer.run(main)
