"""Faults of issue 13, each run against a ground truth: values wrong, events lost or counted twice.

Run: `.venv/bin/python -m bench.faults [--events N] [--kills K] [--requests R] [--only ...]`
(`--only`: poison, kill, redis, serving, exposure-kill, samples-kill, learn-kill, broker, disk).

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

5. kill -9 of the exposure job and of the sample joiner (`exposure-kill`, `samples-kill`): the
   same loop as 2 (chunks replayed paced, a seeded random kill point per chunk, restart at once
   on the same `--recovery-dir`), then `--until-end`. Exposure: every impression produced must
   be seen by `ExposureFilter.seen` (lost = the impressions not seen). Joiner: the parquet log
   (`read_sample_log`, which dedups by id) and training-samples against the in-process joiner
   (`tests.streams.helpers.run`): lost = sample ids missing, wrong = rows differing, twice =
   ids left twice after the dedup.
6. kill -9 of `learn online` (`learn-kill`): the learner (its training steps recorded) on a
   training-samples topic fed paced, killed at seeded random points and restarted, then
   `--until-end`; per model, the samples its newest version holds across the kills against the
   samples produced: lost = skipped, twice = applied twice.
7. learner disk full between the two publishes (`disk`): tests/learners/test_commit.py's ENOSPC
   on the retriever's publish, in-process; lost = samples a model skipped after the restart,
   twice = samples a model applied before the failure and again after it.
8. broker restarted (`broker`): a Tansu of its own (memory storage) restarted under a job with a
   recovery store; the job must stop with the error, then `--reset earliest` must count every
   event of the new log (lost = those it did not count).

Faults other work in progress covers print as "not measured here yet" (`PENDING`). The table is
printed and written to bench/out/faults.md.
"""

from __future__ import annotations

import itertools
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import redis
import typer
import yaml
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.common import bench_stack, fresh_topic, median, produce_all
from bench.stats import CLI, OUT, TYPE_COUNTS_30D, _config, _env
from features.exposure import ExposureFilter, hwm_key
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
from tests.streams.helpers import Job, job_output, recoverable_run, start_job, wait_for

console = Console(width=200)
BENCH_DB = 10  # a Redis DB of its own (bench.stats uses 12, the tests 13-15), flushed at the end
WORLD = SyntheticConfig(
    seed=13, users=150, notes=400, request_gap_ms=30_000.0, start_ms=1_041_379_200_000
)
"""A 2003 replay (2003-01-01), a request every 30 s: the events span about a day per 8k."""
YEAR_MS = 365 * 86_400_000
FUTURE_TS = 4_102_444_800_000  # 2100-01-01
VIEWS = ("user_stats", "note_stats")
PENDING: list[tuple[str, str]] = []
PARTS = (
    "poison", "kill", "redis", "serving",
    "exposure-kill", "samples-kill", "learn-kill", "broker", "disk",
)  # fmt: skip


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


def _by_reason(letters: Counter) -> str:
    """`summarize_dead_letters` counts as one line, "reason/field: count, ..." ("" if none)."""
    return ", ".join(f"{r}/{f}: {c}" for (r, f), c in sorted(letters.items()))


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
        by_reason = _by_reason(reasons)
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
    rng = random.Random(ctx.seed * 100 + processes)
    total, bad = Diff(), []

    def settled(k: int, so_far: list[Event]) -> None:
        nonlocal total
        diff = _settle(ctx, project, so_far, 90.0)
        total += diff
        if diff.wrong or diff.lost or diff.twice:
            dlq = summarize_dead_letters(ctx.state.bootstrap, f"{topic}.dlq")
            why = _by_reason(dlq) or "none"
            bad.append(
                f"kill {k + 1}: {diff.wrong} wrong, {diff.lost} lost after 90 s "
                f"(dead letters so far: {why})"
            )

    points, during, recover = _kill_loop(
        job, args, all_events, kills, rate, rng,
        lambda so_far: lambda: job.hwm() >= so_far[-1].ts,
        progress, f"kill -9 stats, {processes} process(es)", check=settled,
    )  # fmt: skip
    dead = _by_reason(summarize_dead_letters(ctx.state.bootstrap, f"{topic}.dlq")) or "none"
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
        f"restart -> caught up and equal to the oracle (max {max(recover):.1f} s); dead "
        f"letters: {dead}" + "".join(f"; {b}" for b in bad),
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


# -- 5. kill -9 of the exposure job and of the sample joiner ----------------------------------
EXPOSURE_WORLD = SyntheticConfig(seed=9, users=300, notes=2_000, request_gap_ms=2_000.0)
"""The exposure test's world (tests/streams/test_exposure_flow.py): impressions of many notes."""
SAMPLES_WORLD = SyntheticConfig(seed=9, users=120, notes=300, request_gap_ms=20_000.0)
"""The sample joiner test's world (tests/streams/test_samples_job.py)."""


def _job_settings(ctx: Ctx, topic: str, **sections: object) -> tuple[Path, Path]:
    """A settings file of a job on `topic` (and its DLQ) with `sections`; (path, data dir)."""
    data_dir = ctx.tmp / f"data-{topic}"
    topics = {"interactions": topic, "dlq": f"{topic}.dlq", "partitions": 4}
    topics.update(sections.pop("topics", {}))  # type: ignore[call-overload]
    data = {"kafka": {"topics": topics}, "data_dir": str(data_dir), **sections}
    path = ctx.tmp / f"{topic}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data_dir


def _kill_loop(
    job: Job,
    args: list[str],
    events: list[Event],
    kills: int,
    rate: float,
    rng: random.Random,
    ready: Callable[[list[Event]], Callable[[], bool]],
    progress: Progress,
    what: str,
    at_kill: Callable[[list[Event]], None] | None = None,
    check: Callable[[int, list[Event]], None] | None = None,
) -> tuple[list[str], int, list[float]]:
    """The kill -9 loop of every job: replay the first chunk, start
    the job; per kill replay the next chunk (paced), kill -9 the job's process group once the
    replay has produced a seeded random fraction of it, restart at once and wait until
    `ready(events so far)` holds (built right after the restart), then `check(kill, events so
    far)` (inside the timed recovery); `at_kill(events produced)` runs between the kill and the
    restart. The job is left killed.

    Returns (kill points, kills while the replay ran, restart -> ready times)."""
    bounds = np.linspace(0, len(events), kills + 2).astype(int)
    replay(ListSource(events[: bounds[1]], 500), job.bootstrap, job.topic)
    points, during, recover = [], 0, []
    task = progress.add_task(what, total=kills)
    proc = start_job(args, job.env)
    try:
        wait_for(ready(events[: bounds[1]]), 180, f"{what}: the job to start")
        for k in range(kills):
            lo, hi = bounds[k + 1], bounds[k + 2]
            chunk = events[lo:hi]
            produced = [0]
            producer = threading.Thread(
                target=replay,
                args=(ListSource(chunk, 100), job.bootstrap, job.topic),
                kwargs={"rate": rate, "on_progress": lambda n, c=produced: c.append(c.pop() + n)},
            )
            producer.start()
            try:
                at = rng.uniform(0.05, 0.9)
                point = int(at * len(chunk))
                wait_for(lambda p=point, c=produced: c[0] >= p, 180, "the replay to the point")
                during += producer.is_alive()
                points.append(f"{at:.2f}")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
                if at_kill is not None:
                    at_kill(events[: lo + produced[0]])
                start = time.perf_counter()
                proc = start_job(args, job.env)
            finally:
                producer.join()
            wait_for(ready(events[:hi]), 300, f"{what}: the restarted job to catch up")
            if check is not None:
                check(k, events[:hi])
            recover.append(time.perf_counter() - start)
            progress.advance(task)
    except AssertionError as exc:  # a job that died or hangs: say what it printed
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out = job_output(proc)
        raise RuntimeError(f"{exc}; the job printed:\n{out[-3000:]}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    return points, during, recover


def _missed(client: redis.Redis, ns: str, events: list[Event]) -> int:
    """Impressions of `events` the exposure filter does not report as seen (the test's
    `_missed`)."""
    shown: dict[str, list[str]] = {}
    for e in events:
        if e.type == "impression":
            shown.setdefault(e.user_id, []).append(e.note_id)
    bloom = ExposureFilter(client, ns)
    return sum(not seen for user, notes in shown.items() for seen in bloom.seen(user, notes))


def kill_exposure(ctx: Ctx, events: int, kills: int, rate: float, progress: Progress) -> Row:
    """Ground truth: every impression produced is seen by `ExposureFilter.seen` once the
    restarted job has caught up (its mark at the last event produced), and after the final
    `--until-end` run on the same recovery store."""
    all_events = [e for b in SyntheticSource(EXPOSURE_WORLD, limit=events).batches() for e in b]
    topic = fresh_topic(ctx.state.bootstrap, "faults-exposure")
    stack.ensure_topics(ctx.state.bootstrap, [f"{topic}.dlq"], 4)
    ns = f"bench-exposure-{uuid.uuid4().hex[:8]}"
    config, _ = _job_settings(ctx, topic, exposure={"namespace": ns})
    client = redis.Redis.from_url(ctx.redis_url)
    job = Job(ctx.state.bootstrap, topic, config, ctx.env, ctx.redis_url, hwm_key(ns))
    recovery = ctx.tmp / f"recovery-{topic}"
    args = recoverable_run("exposure", config, recovery)
    per_kill: list[int] = []

    def ready(so_far: list[Event]) -> Callable[[], bool]:
        """The job's mark at the last event so far, then every impression seen (or 30 s)."""
        reached: list[float] = []

        def check() -> bool:
            if not reached:
                if job.hwm() < so_far[-1].ts:
                    return False
                reached.append(time.monotonic())
            missed = _missed(client, ns, so_far)
            if missed and time.monotonic() - reached[0] < 30:
                return False
            per_kill.append(missed)
            return True

        return check

    rng = random.Random(ctx.seed * 100 + 3)
    undone: list[int] = []
    points, during, recover = _kill_loop(
        job, args, all_events, kills, rate, rng, ready, progress, "kill -9 exposure",
        lambda so_far: undone.append(_missed(client, ns, so_far)),
    )  # fmt: skip
    lost_live = sum(per_kill[1:])  # per_kill[0]: the first start, before any kill
    wall = run_cli([*args, "--until-end"], ctx.env)
    lost = _missed(client, ns, all_events)
    impressions = sum(e.type == "impression" for e in all_events)
    return Row(
        "kill -9 of the exposure job",
        kills,
        None,
        lost,
        None,
        median(recover),
        f"{len(all_events):,} events ({impressions:,} impressions) in {kills + 1} chunks at "
        f"{rate:,.0f}/s; killed at {' '.join(points)} of the chunks ({during} of {kills} while "
        f"the replay ran; {sum(map(bool, undone))} of the kills left impressions unwritten, "
        f"{sum(undone):,} in all), restarted at once on the same --recovery-dir; lost = "
        f"impressions not seen by `ExposureFilter.seen` after the final `--until-end` "
        f"({wall:.1f} s); once each restarted job had caught up: {lost_live} missed in total; "
        f"time = median restart -> the job's mark at the chunk's end and every impression "
        f"seen (max {max(recover):.1f} s)",
    )


def kill_samples(ctx: Ctx, events: int, kills: int, rate: float, progress: Progress) -> Row:
    """Ground truth: `tests.streams.helpers.run` (the joiner in-process, no kill) over the same
    events. After the kills, the final `--until-end` run on the same recovery store; then the
    parquet log (`read_sample_log`, which dedups by id: the log is at-least-once) and the
    training-samples topic against it."""
    from features.paths import DataPaths
    from features.samples import SAMPLE_COLUMNS, decode_batch, read_sample_log
    from tests.streams.helpers import recovery_progress, resume_epochs
    from tests.streams.helpers import run as run_in_process

    all_events = [e for b in SyntheticSource(SAMPLES_WORLD, limit=events).batches() for e in b]
    topic = fresh_topic(ctx.state.bootstrap, "faults-samples")
    samples_topic = f"{topic}.samples"
    stack.ensure_topics(ctx.state.bootstrap, [f"{topic}.dlq", samples_topic], 4)
    samples = {"negative_keep_rate": 0.5, "shards": 4, "log_rows_per_part": 300}
    config, data_dir = _job_settings(
        ctx, topic, topics={"training_samples": samples_topic}, samples=samples
    )
    job = Job(ctx.state.bootstrap, topic, config, ctx.env, ctx.redis_url)
    recovery = ctx.tmp / f"recovery-{topic}"
    args = recoverable_run("samples", config, recovery)

    def ready(_so_far: list[Event]) -> Callable[[], bool]:
        epoch = recovery_progress(recovery)
        return lambda: recovery_progress(recovery) > epoch + 1  # two snapshots since the start

    rng = random.Random(ctx.seed * 100 + 4)
    points, during, recover = _kill_loop(
        job, args, all_events, kills, rate, rng, ready, progress, "kill -9 sample joiner"
    )
    wall = run_cli([*args, "--until-end"], ctx.env)
    resumed = resume_epochs(recovery)
    mid = sum(b > a for a, b in itertools.pairwise(resumed))
    want = {
        s.sample_id: s for s in run_in_process(all_events, negative_keep_rate=0.5, shards=4).samples
    }
    log_dir = DataPaths(data_dir).sample_log
    raw = pa.concat_tables([pq.read_table(p) for p in sorted(log_dir.glob("part-*.parquet"))])
    log = read_sample_log(log_dir).to_pylist()
    ids = Counter(r["sample_id"] for r in log)

    def differs(r: dict) -> bool:
        s = want.get(r["sample_id"])
        return s is None or r != {c: getattr(s, c) for c in SAMPLE_COLUMNS}

    wrong = sum(differs(r) for r in raw.to_pylist())  # every copy, not only the one kept
    lost = len(set(want) - set(ids))
    twice = sum(c - 1 for c in ids.values())
    on_kafka: Counter = Counter()
    kafka_wrong = 0
    for chunk in read_to_end(ctx.state.bootstrap, samples_topic):
        for record in chunk:
            for s in decode_batch(record.value).samples:
                on_kafka[s.sample_id] += 1
                kafka_wrong += want.get(s.sample_id) != s
    kafka_lost = len(set(want) - set(on_kafka))
    return Row(
        "kill -9 of the sample joiner",
        kills,
        wrong + kafka_wrong,
        lost + kafka_lost,
        twice,
        median(recover),
        f"{len(all_events):,} events -> {len(want):,} samples (in-process joiner); {kills + 1} "
        f"chunks at {rate:,.0f}/s; killed at {' '.join(points)} of the chunks ({during} of "
        f"{kills} while the replay ran; {mid} of the {len(resumed) - 1} restarts resumed from a "
        f"later snapshot than the one before); then `--until-end` on the same --recovery-dir "
        f"({wall:.1f} s). Parquet log: {raw.num_rows:,} rows written, {len(ids):,} ids after "
        f"`read_sample_log`'s dedup; wrong = rows (every copy) differing from the in-process "
        f"sample, lost = ids missing, twice = ids left twice after the dedup. training-samples: "
        f"{kafka_lost} missing, {kafka_wrong} differing, {sum(on_kafka.values()) - len(on_kafka):,}"
        f" re-sent copies (at-least-once by design, not counted); time = median restart -> two "
        f"snapshots committed (max {max(recover):.1f} s)",
    )


# -- 6. kill -9 of learn online ----------------------------------------------------------------
RECORD_ENV = "STREAMREC_BENCH_RECORD"
LEARN_CHILD = (
    "import os, sys\n"
    "from learners.online import OnlineLearner\n"
    "train = OnlineLearner.train\n"
    "out = open(os.environ['" + RECORD_ENV + "'], 'a', buffering=1)\n"
    "def recorded(self, cols, models=('ranker', 'retriever')):\n"
    "    train(self, cols, models)\n"
    "    out.write(','.join(models) + ' ' + ' '.join(map(str, cols.ts.tolist())) + '\\n')\n"
    "OnlineLearner.train = recorded\n"
    "from infra.cli import main\n"
    "sys.argv = ['streamrec', *sys.argv[1:]]\n"
    "main()\n"
)
"""`streamrec` with `OnlineLearner.train` recording the models and the samples (their unique
event times) each step applied, a line per step once it returned (in the page cache before any
publish of it)."""


def _latest(root: Path, model: str) -> tuple[str, int]:
    """(newest readable version, next offset of partition 0 it has applied)."""
    from learners.snapshots import SnapshotReader

    snap = SnapshotReader(root, model, on_fallback=lambda _e: None).latest()
    return str(snap.manifest.version), int(snap.manifest.meta.get("offsets", {}).get("0", 0))


def kill_learn(ctx: Ctx, messages_n: int, kills: int, rate: float, progress: Progress) -> Row:
    """`streamrec learn online` on a one-partition training-samples topic fed (paced) with the
    test fixture's sample batches; kill -9 at seeded random points, restart at once. Per model,
    what its newest version holds is a chain of segments [start of the execution, offset its
    newest version of that execution applied); a segment's samples count as applied only if the
    execution's training steps recorded them. After the kills, `learn online --until-end`.
    lost = produced samples absent from a model's chain; twice = samples in two of its segments
    (docs/learning.md "Restarts")."""
    from features.samples import decode_batch
    from learners.inputs import Columns
    from tests.learners.helpers import CONFIG, messages, publish_trained

    models = ("ranker", "retriever")
    msgs = messages(seed=41, n=messages_n * 100, users=300)
    samples_of = {
        m.offset: Columns.from_samples(decode_batch(m.value).samples).ts.tolist() for m in msgs
    }
    produced = {t for ts in samples_of.values() for t in ts}
    topic = fresh_topic(ctx.state.bootstrap, "faults-learn")
    stack.ensure_topics(ctx.state.bootstrap, [topic], 1)
    stack.ensure_topics(ctx.state.bootstrap, [f"{topic}.dlq"], 4)
    root = ctx.tmp / f"snapshots-{topic}"
    publish_trained(root)
    config, _ = _job_settings(
        ctx,
        f"{topic}-in",
        topics={"training_samples": topic, "dlq": f"{topic}.dlq"},
        snapshots={"root": str(root), "delta_every_s": 0.5, "full_every_s": 3600},
        learn={"batch_size": CONFIG.batch_size, "admit_after": CONFIG.admit_after},
    )
    producer = make_producer(ctx.state.bootstrap)

    def produce(lo: int, hi: int, count: list[int]) -> None:
        for m in msgs[lo:hi]:
            producer.produce(topic, m.value, b"k", partition=0)
            producer.flush(30)
            count[0] += 1
            time.sleep(1.0 / rate)

    record_dir = ctx.tmp / f"record-{topic}"
    record_dir.mkdir()

    def start(n: int, *more: str) -> subprocess.Popen:
        env = {**ctx.env, RECORD_ENV: str(record_dir / f"{n:03d}")}
        argv = [str(CLI.with_name("python")), "-c", LEARN_CHILD]
        argv += ["learn", "online", "--config", str(config), *more]
        with (record_dir / f"out-{n:03d}").open("w") as out:
            return subprocess.Popen(
                argv, env=env, start_new_session=True, stdout=out,
                stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip

    def recorded(n: int) -> dict[str, set[int]]:
        """Per model, the samples execution `n` trained it on (empty before its first step)."""
        path = record_dir / f"{n:03d}"
        out: dict[str, set[int]] = {}
        for line in path.read_text().splitlines() if path.exists() else []:
            names, *ts = line.split()
            for m in names.split(","):
                out.setdefault(m, set()).update(map(int, ts))
        return out

    # per model: the chain of segments (samples) its newest version holds
    chains: dict[str, list[list[int]]] = {m: [] for m in models}
    last = {m: _latest(root, m) for m in models}
    claimed_untrained = 0
    fallbacks = 0

    def account(n: int, begin: int) -> None:
        nonlocal claimed_untrained, fallbacks
        trained = recorded(n)
        for m in models:
            now = _latest(root, m)
            if now[0] == last[m][0]:
                continue  # nothing of this execution persisted for m
            if now[1] < last[m][1]:
                fallbacks += 1
            mine = trained.get(m, set())
            new = [t for o in range(last[m][1], now[1]) for t in samples_of.get(o, [])]
            claimed_untrained += sum(t not in mine for t in new)
            segment = [t for o in range(begin, now[1]) for t in samples_of.get(o, [])]
            chains[m].append([t for t in segment if t in mine])
            last[m] = now

    bounds = np.linspace(0, len(msgs), kills + 2).astype(int)
    produce(0, bounds[1], [0])
    rng = random.Random(ctx.seed * 100 + 5)
    task = progress.add_task("kill -9 learn online", total=kills)
    points, during, recover, starts = [], 0, [], []
    n = 0
    starts.append(min(last[m][1] for m in models))
    proc = start(n)
    try:
        wait_for(lambda: bool(recorded(0)), 180, "the learner to train")
        for k in range(kills):
            lo, hi = bounds[k + 1], bounds[k + 2]
            count = [0]
            feeder = threading.Thread(target=produce, args=(lo, hi, count))
            feeder.start()
            try:
                at = rng.uniform(0.05, 0.9)
                point = int(at * (hi - lo))
                wait_for(lambda p=point, c=count: c[0] >= p, 180, "the feed to the point")
                during += feeder.is_alive()
                points.append(f"{at:.2f}")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
                account(n, starts[n])
                n += 1
                starts.append(min(last[m][1] for m in models))
                t0 = time.perf_counter()
                proc = start(n)
            finally:
                feeder.join()
            wait_for(lambda i=n: bool(recorded(i)), 180, "the restarted learner to train")
            recover.append(time.perf_counter() - t0)
            progress.advance(task)
        os.killpg(proc.pid, signal.SIGKILL)  # the last execution: stopped the same way
        proc.wait(30)
        account(n, starts[n])
        n += 1
        starts.append(min(last[m][1] for m in models))
        final = start(n, "--until-end")
        if final.wait(600) != 0:
            out = (record_dir / f"out-{n:03d}").read_text()
            raise RuntimeError(f"learn online --until-end failed: {out[-2000:]}")
        account(n, starts[n])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    lost = twice = 0
    per_model = []
    for m in models:
        applied = Counter(t for segment in chains[m] for t in segment)
        missing = len(produced - set(applied))
        again = sum(c - 1 for c in applied.values())
        lost += missing
        twice += again
        per_model.append(f"{m} {missing} lost / {again:,} twice, ends at offset {last[m][1]}")
    return Row(
        "kill -9 of learn online",
        kills,
        claimed_untrained,
        lost,
        twice,
        median(recover),
        f"{len(msgs)} messages ({len(produced):,} samples) fed at {rate:g} messages/s in "
        f"{kills + 1} chunks; killed at {' '.join(points)} of the chunks ({during} of {kills} "
        f"while the feed ran), restarted at once (resumed at offsets "
        f"{' '.join(map(str, starts[1:]))}), then `learn online --until-end`; deltas every "
        f"0.5 s. {'; '.join(per_model)}; twice = samples a model trained on in two executions; "
        f"wrong = samples a version claims (offsets) that its execution never trained; "
        f"{fallbacks} fallbacks to an older version; time = median restart -> first training "
        f"step (max {max(recover):.1f} s)",
    )


# -- 7. learner disk full between the two publishes --------------------------------------------
def disk_full(ctx: Ctx, progress: Progress) -> Row:
    """tests/learners/test_commit.py in-process: the retriever's publish fails with ENOSPC
    (after the ranker's), the learner must stop; a restart (`OnlineLearner.from_latest`) then
    reads on; per model, the samples that survived the crash + what the restart applied against
    every sample produced. A delta and a full publish, 3 seeds each."""
    import errno
    from unittest import mock

    import learners.snapshots as snapshots_mod
    from learners.errors import LearnersError
    from learners.online import OnlineLearner
    from tests.learners.helpers import CONFIG, Clock, messages, publish_trained
    from tests.learners.test_commit import (
        MODELS,
        _feed,
        _persisted_offsets,
        _recording,
        _restart_and_finish,
        _samples_of,
    )

    runs = [(kind, seed) for kind in ("delta", "full") for seed in (31, 32, 33)]
    task = progress.add_task("disk full between publishes", total=len(runs))
    lost = twice = not_stopped = 0
    seen = []
    for kind, seed in runs:
        root = ctx.tmp / f"disk-{kind}-{seed}"
        snapshots = publish_trained(root)
        msgs = messages(seed=seed, n=3_000, users=300)
        clock = Clock()
        learner = OnlineLearner.from_latest(CONFIG, snapshots, clock=clock)
        first = _recording(learner)
        _feed(learner, clock, msgs[:10], 11.0)
        write = snapshots_mod._write_synced
        failed = []

        def disk_full_for_the_retriever(path: Path, data: bytes, failed=failed, write=write):
            if "retriever" in Path(path).parts and not failed:
                failed.append(path)
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            write(path, data)

        with mock.patch.object(snapshots_mod, "_write_synced", disk_full_for_the_retriever):
            try:
                _feed(learner, clock, msgs[10:20], 22.0 if kind == "delta" else 3_700.0)
                not_stopped += 1
            except (OSError, LearnersError):
                pass
        persisted = _persisted_offsets(root)
        _, second = _restart_and_finish(snapshots, msgs)
        by_offset = _samples_of(msgs)
        produced = set().union(*by_offset.values())
        for model in MODELS:
            upto = set().union(*(by_offset[o] for o in range(persisted[model])))
            survived = first[model] & upto
            lost += len(produced - (survived | second[model]))
            twice += len(survived & second[model])
        seen.append(", ".join(f"{m} {o}" for m, o in persisted.items()))
        progress.advance(task)
    return Row(
        "learner disk full between the two publishes",
        len(runs),
        not_stopped,
        lost,
        twice,
        None,
        f"in-process (tests/learners/test_commit.py): 30 messages of 100 samples, ENOSPC on the "
        f"retriever's publish of messages 10-20, a delta and a full publish x 3 seeds; restart "
        f"with `OnlineLearner.from_latest` to the end. Offsets persisted at the failure: "
        f"{' / '.join(sorted(set(seen)))} (every run). wrong = runs where the learner did not "
        "stop on the error; twice = samples a model held before the failure and was given "
        'again after the restart (docs/learning.md "Restarts")',
    )


# -- 8. broker restarted ----------------------------------------------------------------------
def _valid_clicks(out: str) -> int:
    """The valid-click count `streamrec run validate` printed (-1 if none)."""
    for line in out.splitlines():
        if "click" in line:
            return int(line.split()[-2].replace(",", ""))
    return -1


def broker_restart(ctx: Ctx, progress: Progress) -> Row:
    """A Tansu of its own with memory storage (tests/streams/test_kafka_io.py's `Broker`),
    restarted under a job with a recovery store: the topic comes back with another log (shorter
    and longer than the old one; with the job stopped and with it running). The job must stop
    with the error (exit 2, within 60 s, nothing processed), then `--reset earliest` must count
    every event of the new log: lost = events of the new log not counted."""
    from tests.streams.helpers import job_config, job_env, make_event, recovery_progress
    from tests.streams.test_kafka_io import Broker

    def clicks(n: int, first: int = 0) -> list[Event]:
        return [make_event("click", i) for i in range(first, first + n)]

    cases = [("stopped", 2_000, 400), ("stopped", 2_000, 4_000), ("running", 2_000, 4_000)]
    task = progress.add_task("broker restarted", total=len(cases))
    broker = Broker(ctx.tmp / "tansu.log")
    broker.start()
    lost = twice = bad_stop = 0
    stops, resets, notes = [], [], []
    try:
        for i, (how, before, after) in enumerate(cases):
            topic = f"t-restart-{i}"
            where = ctx.tmp / f"broker-{i}"
            where.mkdir()
            config, _ = job_config(where, topic)
            recovery = where / "recovery"
            env = job_env(where / "data", broker.address, ctx.redis_url)
            stack.ensure_topics(broker.address, [topic, f"{topic}.dlq"], 4)
            replay(ListSource(clicks(before), 500), broker.address, topic)
            argv = [str(CLI), "run", "validate", "--config", str(config)]
            argv += ["--recovery-dir", str(recovery), "--snapshot-interval", "0.2"]
            t0 = time.monotonic()
            if how == "stopped":
                first = subprocess.run([*argv, "--until-end"], env=env, capture_output=True,
                                       text=True, timeout=120)  # fmt: skip
                assert _valid_clicks(first.stdout) == before, first.stdout + first.stderr
                broker.stop()
                broker.start()
                stack.ensure_topics(broker.address, [topic, f"{topic}.dlq"], 4)
                replay(ListSource(clicks(after, 100_000), 500), broker.address, topic)
                t0 = time.monotonic()
                done = subprocess.run([*argv, "--until-end"], env=env, capture_output=True,
                                      text=True, timeout=120)  # fmt: skip
                code, out = done.returncode, done.stdout + done.stderr
            else:
                job = start_job(argv[1:], env)
                try:
                    wait_for(lambda r=recovery: recovery_progress(r) >= 3, 60, "snapshots")
                    broker.stop()
                    broker.start()
                    stack.ensure_topics(broker.address, [topic, f"{topic}.dlq"], 4)
                    t0 = time.monotonic()
                    replay(ListSource(clicks(after, 100_000), 500), broker.address, topic)
                    out = job_output(job, timeout=120)
                    code = job.returncode
                finally:
                    if job.poll() is None:
                        os.killpg(job.pid, signal.SIGKILL)
                        job.wait()
            took = time.monotonic() - t0
            stops.append(took)
            ok = code == 2 and took < 60 and "--reset earliest`" in out
            ok = ok and _valid_clicks(out.split("error:")[0]) == -1
            bad_stop += not ok
            t1 = time.monotonic()
            rebuilt = subprocess.run([*argv, "--until-end", "--reset", "earliest"], env=env,
                                     capture_output=True, text=True, timeout=120)  # fmt: skip
            counted = _valid_clicks(rebuilt.stdout) if rebuilt.returncode == 0 else 0
            resets.append(time.monotonic() - t1)
            lost += max(after - counted, 0)
            twice += max(counted - after, 0)
            notes.append(
                f"{how}, {before:,} -> {after:,} events: exit {code} in {took:.1f} s, "
                f"reset counted {counted:,}"
            )
            progress.advance(task)
    finally:
        broker.stop()
    return Row(
        "broker restarted (topics lost, recovery offsets) -> `--reset earliest`",
        len(cases),
        bad_stop,
        lost,
        twice,
        median(resets),
        "Tansu (memory storage) restarted under `streamrec run validate` with a recovery store; "
        "the topic recreated with another log. " + "; ".join(notes) + ". wrong = runs where the "
        "job did not stop with the error naming `--reset earliest` (exit 2, < 60 s, nothing "
        "counted); lost = events of the new log the reset run did not count; twice = counted "
        "beyond it; time = the `--reset earliest` run (median)",
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
    exposure_events: Annotated[int, typer.Option(help="Events, exposure kill -9 run.")] = 12_000,
    exposure_rate: Annotated[float, typer.Option(help="Replay pace, exposure kills.")] = 2_000.0,
    samples_events: Annotated[int, typer.Option(help="Events, joiner kill -9 run.")] = 12_000,
    samples_rate: Annotated[float, typer.Option(help="Replay pace, joiner kills.")] = 800.0,
    learn_messages: Annotated[
        int, typer.Option(help="training-samples messages (100 samples), learner kills.")
    ] = 66,
    learn_rate: Annotated[float, typer.Option(help="Messages/s fed, learner kills.")] = 2.0,
    seed: Annotated[int, typer.Option(help="Seed of the kill points and injected events.")] = 13,
    only: Annotated[str, typer.Option(help=f"Comma-separated subset of {','.join(PARTS)}.")] = (
        ",".join(PARTS)
    ),
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
                if "exposure-kill" in parts:
                    rows.append(kill_exposure(ctx, exposure_events, kills, exposure_rate, progress))
                if "samples-kill" in parts:
                    rows.append(kill_samples(ctx, samples_events, kills, samples_rate, progress))
                if "learn-kill" in parts:
                    rows.append(kill_learn(ctx, learn_messages, kills, learn_rate, progress))
                if "broker" in parts:
                    rows.append(broker_restart(ctx, progress))
                if "disk" in parts:
                    rows.append(disk_full(ctx, progress))
        finally:
            client.flushdb()
    rows += [Row(fault, notes=note) for fault, note in PENDING]
    table = Table(*HEADER, title="faults against the pandas oracle")
    for row in rows:
        table.add_row(*row.cells())
    console.print(table)
    command = (
        f"python -m bench.faults --events {events} --kills {kills} --kill-events {kill_events} "
        f"--rate {rate:g} --requests {requests} --exposure-events {exposure_events} "
        f"--exposure-rate {exposure_rate:g} --samples-events {samples_events} "
        f"--samples-rate {samples_rate:g} --learn-messages {learn_messages} "
        f"--learn-rate {learn_rate:g} --seed {seed}"
    )
    if parts != set(PARTS):
        command += f" --only {only}"
    OUT.mkdir(exist_ok=True)
    path = OUT / "faults.md"
    path.write_text(_markdown(rows, command))
    console.print(f"table: {path}")


if __name__ == "__main__":
    typer.run(main)
