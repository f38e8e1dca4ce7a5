"""Helpers shared by the stream tests: events, the joiner run in-process, job configs, the CLI."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import yaml
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from features.samples import Sample, decode_batch
from features.windows import MINUTE
from streams.config import SamplesConfig
from streams.events import Event, encode_event
from streams.kafka_io import RawBatch
from streams.samples import JoinReport, SampleLogSink, build_flow

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


def start_job(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start `streamrec <args>` in its own process group (so kill -9 reaches every process)."""
    return subprocess.Popen(
        [CLI, *args],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


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
    (msgspec.json.encode({**VALID, "v": 2}), "unsupported_version", "v"),
    (msgspec.json.encode({**VALID, "category": "x" * 20_000}), "oversized", None),
]


def raw_batches(
    events: list[Event], partitions: int = PARTITIONS, size: int = 50
) -> list[RawBatch]:
    """Spread events over partitions by user (crc32), batches interleaved in time order."""
    by_part: dict[int, list[Event]] = {p: [] for p in range(partitions)}
    for e in events:
        by_part[zlib.crc32(e.user_id.encode()) % partitions].append(e)
    out = []
    for p, rows in by_part.items():
        for lo in range(0, len(rows), size):
            chunk = rows[lo : lo + size]
            batch = RawBatch(
                "t",
                p,
                [e.user_id.encode() for e in chunk],
                [encode_event(e) for e in chunk],
                list(range(lo, lo + len(chunk))),
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
