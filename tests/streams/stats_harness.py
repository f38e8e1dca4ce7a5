"""Helpers for end-to-end tests of the stats job: config files, the CLI, reading Feast back."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from features.schema import FeatureConfig, derive
from streams.reference import events_frame, reference_counts
from streams.tiles import METRICS, WINDOWS

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


def expected_features(events: list, view: str) -> pd.DataFrame:
    """Ground truth: pandas window counts plus the derived features, as of the last event."""
    key = "user_id" if view == "user_stats" else "note_id"
    frame = events_frame(events)
    as_of = int(frame.ts.max())
    counts = reference_counts(frame, key, as_of)
    arrays = {
        w.name: counts[[f"{m}_{w.name}" for m in METRICS]].to_numpy(dtype=np.int64) for w in WINDOWS
    }
    derived = derive(view, arrays, FeatureConfig())
    return pd.DataFrame({k: np.asarray(v) for k, v in derived.items()}, index=counts.index)
