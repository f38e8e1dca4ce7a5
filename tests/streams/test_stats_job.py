"""The stats job end to end: Kafka -> `streamrec run stats` -> Feast, equal to pandas; kill -9."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from features.paths import DataPaths
from features.schema import ENTITY_KEY
from features.store import (
    apply_definitions,
    feature_store,
    online_features,
    remove_project_files,
)
from infra.config import Settings
from infra.stack import StackState
from streams.events import Event
from streams.reference import (
    events_frame,
    expected_features,
    frame_mismatches,
    historical_mismatches,
    three_times,
)
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
    job_output,
    recoverable_run,
    resume_epochs,
    run_to_end,
    start_job,
)

events = events_fixture(
    SyntheticConfig(seed=5, users=150, notes=400, request_gap_ms=30_000.0), 24_000
)


def _read_back(
    redis_url: str, project: str, data_dir: Path, view: str, ids: list[str]
) -> pd.DataFrame:
    store = feature_store(redis_url, project, data_dir)
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
    """The offline log behind the views: `get_historical_features` at 3 times per entity equals
    pandas as of each time; an id without rows reads as nulls; `materialize` of the log into
    an empty project equals what the job wrote."""
    store = feature_store(redis_url, project, data_dir)
    frame = events_frame(events)
    for view in ("user_stats", "note_stats"):
        key = ENTITY_KEY[view]
        requests = three_times(frame, key, seed=7)
        ids = requests[key].drop_duplicates()
        requests = requests[requests[key].isin(ids.iloc[:40])]  # keep the join small
        unknown = pd.DataFrame({key: ["never-seen"], "as_of": [events[-1].ts]})
        requests = pd.concat([requests, unknown], ignore_index=True)
        assert historical_mismatches(store, frame, view, requests) == 0, view
    # Feast's own materialize of the log into a project with nothing in Redis yet.
    fresh = f"{project}_mat"
    DataPaths(data_dir).offline(fresh).parent.mkdir(parents=True, exist_ok=True)
    DataPaths(data_dir).offline(fresh).symlink_to(DataPaths(data_dir).offline(project))
    target = feature_store(redis_url, fresh, data_dir)
    apply_definitions(target, data_dir)
    start = datetime.fromtimestamp(events[0].ts / 1000 - 86_400, UTC)
    target.materialize(start, datetime.fromtimestamp(events[-1].ts / 1000 + 1, UTC))
    try:
        for view in ("user_stats", "note_stats"):
            want = expected_features(events, view)
            job = _read_back(redis_url, project, data_dir, view, list(want.index))
            got = _read_back(redis_url, fresh, data_dir, view, list(want.index))
            assert frame_mismatches(got, job[want.columns]) == 0, view
    finally:
        DataPaths(data_dir).offline(fresh).unlink()
        remove_project_files(fresh, data_dir)


@pytest.mark.parametrize("processes", [1, 2])
def test_kill_9_mid_replay_then_restart_equals_uninterrupted(
    job: StatsJob, tmp_path: Path, events: list[Event], processes: int
) -> None:
    recovery = tmp_path / "recovery"
    base = recoverable_run("stats", job.config, recovery, "--processes", str(processes))
    third = len(events) // 3
    crashed_at = crash_mid_replay(
        job, base, events, third, batch=200, rate=1_000.0, recovery=recovery
    )
    assert crashed_at < events[-1].ts
    run_to_end(base, job.env)
    # The restart resumed from a snapshot taken mid-stream (not a re-read from the start).
    first, resumed = resume_epochs(recovery)[-2:]
    assert resumed > first
    _assert_features_equal(job.redis_url, job.project, job.data_dir, events)


HOSTS = ("127.0.0.2", "127.0.0.3")


def _cluster_port() -> int:
    """A base port p with p free on 127.0.0.2 and p + 1 free on 127.0.0.3 (the two "hosts")."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind((HOSTS[0], 0))
            base = first.getsockname()[1]
            try:
                second.bind((HOSTS[1], base + 1))
            except OSError:
                continue
            return base
    raise AssertionError("no pair of free ports on 127.0.0.2/127.0.0.3")


def test_two_hosts_form_one_cluster_and_read_each_partition_once(
    job: StatsJob, events: list[Event], tmp_path: Path
) -> None:
    """Two "hosts" (127.0.0.2, 127.0.0.3) each start `streamrec run stats` alone, told only
    their process id (`STREAMREC_PROCESS_ID`) and the settings' `cluster.hosts`: they form one
    Bytewax cluster, read every event exactly once between them, and store what pandas says."""
    replay(ListSource(events, 1_000), job.bootstrap, job.topic)
    settings = yaml.safe_load(job.config.read_text())
    port = _cluster_port()
    settings["cluster"] = {"hosts": list(HOSTS), "ports": {"stats": port}}
    config = tmp_path / "hosts.yaml"
    config.write_text(yaml.safe_dump(settings))
    args = ["run", "stats", "--config", str(config), "--until-end"]
    procs = [start_job(args, {**job.env, "STREAMREC_PROCESS_ID": str(i)}) for i in range(2)]
    outputs = [job_output(proc, timeout=300) for proc in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out
    read = []
    for i, out in enumerate(outputs):
        done = re.search(rf"stats \(process {i}/2\): done in .* s: ([\d,]+) events read", out)
        assert done is not None, out
        assert f"cluster {HOSTS[0]}:{port} {HOSTS[1]}:{port + 1}" in out, out
        read.append(int(done.group(1).replace(",", "")))
    # 4 partitions between 2 processes: a partition read by both would count its events twice.
    assert sum(read) == len(events), read
    assert all(n > 0 for n in read), read
    assert job.hwm() == events[-1].ts
    _assert_features_equal(job.redis_url, job.project, job.data_dir, events)
