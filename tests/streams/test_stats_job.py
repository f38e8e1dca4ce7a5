"""The stats job end to end: Kafka -> `streamrec run stats` -> Feast, equal to pandas; kill -9."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.schema import ENTITY_KEY
from features.store import feature_store, online_features
from infra.config import Settings
from infra.stack import StackState
from streams.events import Event
from streams.reference import expected_features
from streams.replay import replay
from streams.sources import ListSource
from streams.sources.synthetic import SyntheticConfig
from tests.streams.helpers import (
    Job,
    cli_env,
    crash_mid_replay,
    create_topics,
    events_fixture,
    job_config,
    recoverable_run,
    recovery_progress,
    resume_epochs,
    run_to_end,
)

events = events_fixture(
    SyntheticConfig(seed=5, users=150, notes=400, request_gap_ms=30_000.0), 24_000
)


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


@dataclass(frozen=True, kw_only=True)
class StatsJob(Job):
    """A stats job, its Feast project and data directory."""

    project: str
    data_dir: Path


@pytest.fixture
def job(
    local_stack: StackState, settings: Settings, redis_url: str, topic_name: str, tmp_path: Path
) -> StatsJob:
    create_topics(local_stack.bootstrap, topic_name)
    config, project = job_config(tmp_path, topic_name)
    env = cli_env(settings.data_dir, redis_url)
    return StatsJob(
        local_stack.bootstrap,
        topic_name,
        config,
        env,
        redis_url,
        f"{project}:hwm:stats",
        project=project,
        data_dir=settings.data_dir,
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_bounded_run_matches_pandas_through_feast(
    job: StatsJob, events: list[Event], processes: int
) -> None:
    replay(ListSource(events, 1_000), job.bootstrap, job.topic)
    run_to_end(
        ["run", "stats", "--config", str(job.config), "--processes", str(processes)], job.env
    )
    assert job.hwm() == events[-1].ts
    _assert_features_equal(job.redis_url, job.project, job.data_dir, events)
    if processes == 1:
        _assert_offline_log_serves_point_in_time(job.redis_url, job.project, job.data_dir, events)


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
    job: StatsJob, tmp_path: Path, events: list[Event], processes: int
) -> None:
    recovery = tmp_path / "recovery"
    base = recoverable_run("stats", job.config, recovery, "--processes", str(processes))
    third = len(events) // 3
    half = events[len(events) // 2].ts
    crashed_at = crash_mid_replay(
        job,
        base,
        events,
        third,
        batch=200,
        rate=2_000.0,
        midway=lambda epoch: job.hwm() > half and recovery_progress(recovery) > epoch,
        midway_what="the job to pass half of the stream and commit a snapshot",
        recovery=recovery,
    )
    assert crashed_at < events[-1].ts
    run_to_end(base, job.env)
    # The restart resumed from a snapshot taken mid-stream (not a re-read from the start).
    first, resumed = resume_epochs(recovery)[-2:]
    assert resumed > first
    _assert_features_equal(job.redis_url, job.project, job.data_dir, events)
