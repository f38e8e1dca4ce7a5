"""Helpers shared by the stream tests: events, the joiner run in-process, job configs, the CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
import yaml
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from features.redis_conn import connect
from features.samples import Sample, decode_batch
from features.windows import MINUTE
from infra.stack import ensure_topics
from streams.config import SamplesConfig
from streams.events import Event, encode_event
from streams.kafka_io import RawBatch
from streams.replay import replay
from streams.samples import JoinReport, SampleLogSink, build_flow
from streams.sources import ListSource
from streams.sources.synthetic import SyntheticConfig, SyntheticSource

CLI = Path(sys.executable).with_name("streamrec")
PARTITIONS = 3
WINDOW = 30 * MINUTE


def job_config(tmp: Path, topic: str, **stats: object) -> tuple[Path, str]:
    """Write a settings file for a job on `topic`; return (path, feast project)."""
    project = f"p{uuid.uuid4().hex[:8]}"
    data = {
        "kafka": {"topics": {"interactions": topic, "dlq": f"{topic}.dlq", "partitions": 4}},
        "feast_project": project,
        "stats": {"flush_interval_ms": 100, **stats},
    }
    path = tmp / "settings.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, project


def cli_env(state_dir: Path, redis_url: str) -> dict[str, str]:
    """Environment for CLI subprocesses: the session's stack and the test Redis DB."""
    env = {**os.environ, "STREAMREC_DATA_DIR": str(state_dir), "REDIS_URL": redis_url}
    env.pop("KAFKA_BOOTSTRAP", None)
    return env


def job_env(data_dir: Path, bootstrap: str, redis_url: str) -> dict[str, str]:
    """Environment for CLI subprocesses with a data directory of their own (not the session's)."""
    return {
        **os.environ,
        "STREAMREC_DATA_DIR": str(data_dir),
        "KAFKA_BOOTSTRAP": bootstrap,
        "REDIS_URL": redis_url,
    }


@dataclass(frozen=True)
class Job:
    """A job under test: its topics on the broker (created), settings file, CLI environment and
    the Redis key of the event-time high-water mark it stores ("" if it stores none)."""

    bootstrap: str
    topic: str
    config: Path
    env: dict[str, str]
    redis_url: str
    hwm_key: str = ""

    def hwm(self) -> int:
        """The high-water mark the job has stored (0 before its first write; 0 if it keeps none)."""
        if not self.hwm_key:
            return 0
        raw = connect(self.redis_url).get(self.hwm_key)
        return int(raw) if raw else 0


def create_topics(bootstrap: str, topic: str, *more: str) -> None:
    """Create `topic`, its DLQ and `more` topics, 4 partitions each."""
    ensure_topics(bootstrap, [topic, f"{topic}.dlq", *more], 4)


def replayed_topic(
    bootstrap: str, topic: str, tmp: Path, events: list[Event], **stats: object
) -> tuple[Path, str]:
    """Create `topic` (and its DLQ), replay `events` into it and write a job settings file for
    it; return (settings path, feast project)."""
    create_topics(bootstrap, topic)
    replay(ListSource(events, 1_000), bootstrap, topic)
    return job_config(tmp, topic, **stats)


def start_job(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start `streamrec <args>` in its own process group (so kill -9 reaches every process).

    Its output goes to an unnamed temporary file, never a pipe nobody reads while it runs (a
    job that prints more than a pipe holds would block on its next line): `job_output`.
    """
    out = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [CLI, *args], env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    proc.output_file = out  # type: ignore[attr-defined]
    return proc


def job_output(proc: subprocess.Popen, timeout: float = 30) -> str:
    """What a `start_job` job printed, once it has exited (waits up to `timeout` s)."""
    proc.wait(timeout)
    out = proc.output_file  # type: ignore[attr-defined]
    out.seek(0)
    return out.read()


def recoverable_run(job: str, config: Path, recovery: Path, *more: str) -> list[str]:
    """Arguments of `streamrec run <job>` on `config`, recovering in `recovery` (a snapshot every
    0.5 s), then `more`."""
    base = ["run", job, "--config", str(config), "--recovery-dir", str(recovery)]
    return [*base, "--snapshot-interval", "0.5", *more]


def crash_mid_replay(
    job: Job,
    args: list[str],
    events: list[Event],
    head: int,
    *,
    batch: int,
    rate: float,
    recovery: Path,
    midway: Callable[[int], bool] | None = None,
    midway_what: str = "the job to pass half of the stream and commit a snapshot",
    started: Callable[[], bool] | None = None,
    started_what: str = "the job to process the events replayed before it started",
) -> int:
    """The first half of a kill -9 test: replay `events[:head]`, start `streamrec <args>` and
    wait until `started` holds (default: the job's mark reached `events[head - 1]`); replay the
    rest in a thread (batches of `batch` at `rate` events/s, a pace the job outruns) and kill -9
    the job's process group once `midway(epoch)` holds (`epoch`: the recovery progress when the
    rest began; default: the job's mark passed the middle event and a snapshot was committed
    since), the replay still running.

    Returns the job's high-water mark just before the kill.
    """
    replay(ListSource(events[:head], 1_000), job.bootstrap, job.topic)
    proc = start_job(args, job.env)
    producer: threading.Thread | None = None
    try:
        caught_up = started or (lambda: job.hwm() >= events[head - 1].ts)
        wait_for(caught_up, timeout=120, what=started_what)
        producer = threading.Thread(
            target=replay,
            args=(ListSource(events[head:], batch), job.bootstrap, job.topic),
            kwargs={"rate": rate},
        )
        producer.start()
        epoch = recovery_progress(recovery)
        half = events[len(events) // 2].ts
        passed = midway or (lambda e: job.hwm() > half and recovery_progress(recovery) > e)
        wait_for(lambda: passed(epoch), timeout=120, what=midway_what)
        assert producer.is_alive(), "the replay ended before the crash: raise the event count"
        assert not unlinked_stores(proc.pid), "a process writes a recovery file no longer on disk"
        crashed_at = job.hwm()
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if producer is not None:
            producer.join()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return crashed_at


def unlinked_stores(group: int) -> list[str]:
    """The SQLite files (recovery partitions, their write-ahead logs) that processes of the
    process group `group` have open although they were deleted: what they write there is lost."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) != group:
                continue
            for fd in (stat.parent / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if ".sqlite3" in target and target.endswith(" (deleted)"):
                        found.append(target)
    return found


def run_to_end(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `streamrec <args> --until-end`; fail with its output unless it exits 0."""
    done = subprocess.run(
        [CLI, *args, "--until-end"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def synthetic_events(world: SyntheticConfig, limit: int) -> list[Event]:
    """The first `limit` events of the synthetic `world`, in one list."""
    return [e for b in SyntheticSource(world, limit=limit).batches() for e in b]


def events_fixture(world: SyntheticConfig, limit: int) -> Callable[[], list[Event]]:
    """A module-scoped fixture of `synthetic_events(world, limit)` (`events = events_fixture(...)`
    in the test module)."""

    @pytest.fixture(scope="module")
    def events() -> list[Event]:
        return synthetic_events(world, limit)

    return events


def recovery_progress(recovery_dir: Path) -> int:
    """The lowest epoch every recovery partition has committed (0 before the first snapshot)."""
    parts = sorted(recovery_dir.glob("part-*.sqlite3"))
    if not parts:
        return 0
    epochs = []
    for part in parts:
        with sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5) as db:
            try:
                row = db.execute("SELECT MIN(commit_epoch) FROM commits").fetchone()
            except sqlite3.OperationalError:
                return 0
        epochs.append(row[0] or 0)
    return min(epochs)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def resume_epochs(recovery_dir: Path) -> list[int]:
    """The epoch each execution recorded in the recovery store resumed from, oldest first."""
    rows: dict[int, int] = {}
    for part in sorted(recovery_dir.glob("part-*.sqlite3")):
        with sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5) as db:
            rows.update(db.execute("SELECT ex_num, resume_epoch FROM exs").fetchall())
    return [rows[k] for k in sorted(rows)]


def make_event(kind: str, i: int = 0) -> Event:
    extra = {"watch_ms": 1234, "duration_ms": 5000} if kind == "play" else {}
    return Event(
        event_id=f"e{i}-{kind}",
        ts=1_700_000_000_000 + i,
        user_id=f"u{i}",
        note_id=f"n{i}",
        type=kind,
        author_id="a1",
        category="c1",
        request_id=f"r{i}",
        position=i % 10,
        **extra,
    )


VALID = {"event_id": "e1", "ts": 1, "user_id": "u", "note_id": "n", "type": "click"}

MALFORMED = [
    (b"not json at all", "not_json", None),
    (b'{"event_id": "e1", "ts": 1', "not_json", None),
    (b"[1, 2, 3]", "not_object", None),
    (msgspec.json.encode({**VALID, "ts": "1"}), "wrong_type", "ts"),
    (msgspec.json.encode({**VALID, "user_id": 5}), "wrong_type", "user_id"),
    (msgspec.json.encode({**VALID, "ts": 1.5}), "wrong_type", "ts"),
    (
        msgspec.json.encode({k: v for k, v in VALID.items() if k != "note_id"}),
        "missing_field",
        "note_id",
    ),
    (msgspec.json.encode({**VALID, "type": "teleport"}), "unknown_type", "type"),
    (msgspec.json.encode({**VALID, "ts": -5}), "bad_value", "ts"),
    (msgspec.json.encode({**VALID, "watch_ms": -1}), "bad_value", "watch_ms"),
    (msgspec.json.encode({**VALID, "user_id": ""}), "bad_value", "user_id"),
    (msgspec.json.encode({**VALID, "colour": "red"}), "unknown_field", "colour"),
    (msgspec.json.encode({**VALID, "type": "play"}), "missing_field", "watch_ms"),
    (msgspec.json.encode({**VALID, "v": 3}), "unsupported_version", "v"),
    (msgspec.json.encode({**VALID, "category": "x" * 20_000}), "oversized", None),
]


def raw_batches(
    events: list[Event],
    partitions: int = PARTITIONS,
    size: int = 50,
    topic: str = "t",
    first_offset: int = 0,
) -> list[RawBatch]:
    """Spread events over partitions by user (crc32), batches interleaved in time order; each
    partition's offsets count from `first_offset`."""
    by_part: dict[int, list[Event]] = {p: [] for p in range(partitions)}
    for e in events:
        by_part[zlib.crc32(e.user_id.encode()) % partitions].append(e)
    out = []
    for p, rows in by_part.items():
        for lo in range(0, len(rows), size):
            chunk = rows[lo : lo + size]
            batch = RawBatch(
                topic,
                p,
                [e.user_id.encode() for e in chunk],
                [encode_event(e) for e in chunk],
                list(range(first_offset + lo, first_offset + lo + len(chunk))),
            )
            out.append((chunk[0].ts, p, batch))
    return [b for _, _, b in sorted(out, key=lambda x: x[:2])]


@dataclass
class Result:
    samples: list[Sample]
    batch_ids: list[str]
    counts: Counter
    dead: list
    log: list


def run(
    events: list[Event] | list[RawBatch],
    workers: int = 1,
    log_dir: Path | None = None,
    **overrides: object,
) -> Result:
    cfg = {"shards": 2, "negative_keep_rate": 1.0, "allowed_lateness_ms": MINUTE}
    config = SamplesConfig(**{**cfg, **overrides})
    batches = events if events and isinstance(events[0], RawBatch) else raw_batches(events)
    messages: list = []
    log: list = []
    dead: list = []
    reports: list[JoinReport] = []
    flow = build_flow(
        TestingSource(batches),
        TestingSink(messages),
        SampleLogSink(log_dir) if log_dir is not None else TestingSink(log),
        TestingSink(dead),
        TestingSink(reports),
        config,
        range(PARTITIONS),
        recoverable=False,
    )
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    decoded = [decode_batch(m.value) for m in messages]
    for m, b in zip(messages, decoded, strict=True):
        assert m.key == b.batch_id.encode()
        assert len(b.samples) <= config.batch_size
        assert b.max_ts == max(s.ts for s in b.samples)
    counts: Counter = Counter()
    for r in reports:
        counts.update(r.counts)
    samples = sorted((s for b in decoded for s in b.samples), key=lambda s: s.sample_id)
    return Result(samples, sorted(b.batch_id for b in decoded), counts, dead, log)
