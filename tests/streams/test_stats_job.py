"""The stats job end to end: Kafka -> `streamrec run stats` -> Feast, equal to pandas; kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from features.schema import ENTITY_KEY
from features.store import feature_store, online_features
from infra.config import Settings
from infra.stack import StackState, ensure_topics
from streams.events import Event
from streams.reference import expected_features
from streams.replay import replay
from streams.sources import ListSource
from streams.sources.synthetic import SyntheticConfig, SyntheticSource
from tests.streams.helpers import (
    cli_env,
    job_config,
    recovery_progress,
    resume_epochs,
    start_job,
    wait_for,
)

WORLD = SyntheticConfig(seed=5, users=150, notes=400, request_gap_ms=30_000.0)


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return [e for b in SyntheticSource(WORLD, limit=24_000).batches() for e in b]


def _read_back(
    redis_url: str, project: str, data_dir: Path, view: str, ids: list[str]
) -> pd.DataFrame:
    store = feature_store(redis_url, project, data_dir)
    from features.store import apply_definitions

    apply_definitions(store, data_dir)
    values = online_features(store, view, ids)
    key = ENTITY_KEY[view]
    frame = pd.DataFrame(values).set_index(key)
    return frame.loc[ids]


def _assert_features_equal(
    redis_url: str, project: str, data_dir: Path, events: list[Event]
) -> None:
    for view in ("user_stats", "note_stats"):
        want = expected_features(events, view)
        got = _read_back(redis_url, project, data_dir, view, list(want.index))
        assert got.notna().all().all(), f"{view}: some entities have no stored row"
        for column in want.columns:
            np.testing.assert_allclose(
                got[column].to_numpy(dtype=np.float64),
                want[column].to_numpy(dtype=np.float64),
                rtol=1e-12,
                err_msg=f"{view}.{column}",
            )


def _run_to_end(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _stats_hwm(redis_url: str, project: str) -> int:
    raw = redis.Redis.from_url(redis_url).get(f"{project}:hwm:stats")
    return int(raw) if raw else 0


@pytest.mark.parametrize("processes", [1, 2])
def test_bounded_run_matches_pandas_through_feast(
    local_stack: StackState,
    settings: Settings,
    redis_url: str,
    topic_name: str,
    tmp_path: Path,
    events: list[Event],
    processes: int,
) -> None:
    ensure_topics(local_stack.bootstrap, [topic_name, f"{topic_name}.dlq"], 4)
    replay(ListSource(events, 1_000), local_stack.bootstrap, topic_name)
    config, project = job_config(tmp_path, topic_name)
    env = cli_env(settings.data_dir, redis_url)
    from tests.streams.helpers import CLI

    args = [str(CLI), "run", "stats", "--until-end", "--config", str(config)]
    _run_to_end([*args, "--processes", str(processes)], env)
    assert _stats_hwm(redis_url, project) == events[-1].ts
    _assert_features_equal(redis_url, project, settings.data_dir, events)
    if processes == 1:
        _assert_offline_log_serves_point_in_time(redis_url, project, settings.data_dir, events)


def _assert_offline_log_serves_point_in_time(
    redis_url: str, project: str, data_dir: Path, events: list[Event]
) -> None:
    """The offline log behind the views answers `get_historical_features` point in time."""
    store = feature_store(redis_url, project, data_dir)
    want = expected_features(events, "user_stats")
    users = list(want.index[:20])
    first_seen = {u: min(e.ts for e in events if e.user_id == u) for u in users}
    end = pd.Timestamp(events[-1].ts + 1, unit="ms", tz="UTC")
    rows = pd.DataFrame(
        {
            "user_id": users * 2,
            "event_timestamp": [end] * len(users)
            + [pd.Timestamp(first_seen[u] - 1, unit="ms", tz="UTC") for u in users],
        }
    )
    refs = ["user_stats:clicks_1d", "user_stats:impressions_30d", "user_stats:ctr_7d"]
    got = store.get_historical_features(entity_df=rows, features=refs).to_df()
    at_end = got[got.event_timestamp == end].set_index("user_id").loc[users]
    for ref in refs:
        name = ref.split(":")[1]
        np.testing.assert_allclose(at_end[name].to_numpy(float), want.loc[users, name])
    # Before a user's first event no row of it is valid yet.
    assert got[got.event_timestamp != end][["clicks_1d", "ctr_7d"]].isna().all().all()


@pytest.mark.parametrize("processes", [1, 2])
def test_kill_9_mid_replay_then_restart_equals_uninterrupted(
    local_stack: StackState,
    settings: Settings,
    redis_url: str,
    topic_name: str,
    tmp_path: Path,
    events: list[Event],
    processes: int,
) -> None:
    ensure_topics(local_stack.bootstrap, [topic_name, f"{topic_name}.dlq"], 4)
    config, project = job_config(tmp_path, topic_name)
    env = cli_env(settings.data_dir, redis_url)
    recovery = tmp_path / "recovery"
    base = [
        "run",
        "stats",
        "--config",
        str(config),
        "--recovery-dir",
        str(recovery),
        "--snapshot-interval",
        "0.5",
        "--processes",
        str(processes),
    ]
    third = len(events) // 3
    replay(ListSource(events[:third], 1_000), local_stack.bootstrap, topic_name)
    job = start_job(base, env)
    producer: threading.Thread | None = None
    try:
        wait_for(
            lambda: _stats_hwm(redis_url, project) >= events[third - 1].ts,
            timeout=120,
            what="the job to start and process the first third",
        )
        # The rest is replayed at a pace the job outruns, so the crash lands mid-replay.
        producer = threading.Thread(
            target=replay,
            args=(ListSource(events[third:], 200), local_stack.bootstrap, topic_name),
            kwargs={"rate": 2_000.0},
        )
        producer.start()
        start_epoch = recovery_progress(recovery)
        wait_for(
            lambda: (
                _stats_hwm(redis_url, project) > events[len(events) // 2].ts
                and recovery_progress(recovery) > start_epoch
            ),
            timeout=120,
            what="the job to pass half of the stream and commit a snapshot",
        )
        assert producer.is_alive(), "the replay ended before the crash"
        crashed_at = _stats_hwm(redis_url, project)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if producer is not None:
            producer.join()
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert crashed_at < events[-1].ts
    from tests.streams.helpers import CLI

    _run_to_end([str(CLI), *base, "--until-end"], env)
    # The restart resumed from a snapshot taken mid-stream (not a re-read from the start).
    first, resumed = resume_epochs(recovery)[-2:]
    assert resumed > first
    _assert_features_equal(redis_url, project, settings.data_dir, events)
