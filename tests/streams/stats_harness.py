"""Helpers for end-to-end tests of the stats job: config files, the CLI, reading Feast back."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml

CLI = Path(sys.executable).with_name("streamrec")


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
    env = {**os.environ, "STREAMREC_STATE_DIR": str(state_dir), "REDIS_URL": redis_url}
    env.pop("KAFKA_BOOTSTRAP", None)
    return env


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
