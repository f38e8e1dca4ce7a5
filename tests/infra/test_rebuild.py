"""`streamrec features rebuild` restores an online store that lost its data, exactly."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from features.client import FeatureClient
from features.redis_conn import connect
from features.schema import ENTITY_KEY
from features.store import apply_definitions, feature_store, online_features
from infra.config import Settings
from streams.reference import expected_features
from streams.sources.synthetic import SyntheticConfig
from tests.streams.helpers import (
    CLI,
    cli_env,
    replayed_topic,
    run_to_end,
    synthetic_events,
)


def _features(redis_url: str, project: str, data_dir: Path, view: str, ids: list) -> pd.DataFrame:
    store = feature_store(redis_url, project, data_dir)
    apply_definitions(store, data_dir)
    return pd.DataFrame(online_features(store, view, ids)).set_index(ENTITY_KEY[view]).loc[ids]


def test_rebuild_from_kafka_after_redis_lost_the_data(
    bootstrap: str, settings: Settings, redis_url: str, topic_name: str, tmp_path: Path
) -> None:
    events = synthetic_events(SyntheticConfig(seed=3, users=60, notes=150), 4_000)
    config, project = replayed_topic(bootstrap, topic_name, tmp_path, events)
    env = cli_env(settings.data_dir, redis_url)
    run_to_end(["run", "stats", "--config", str(config)], env)
    client = connect(redis_url)
    lost = [k for k in client.scan_iter(count=1_000) if project.encode() in k]
    assert lost  # the job wrote rows of its project
    client.delete(*lost)  # Redis lost the project's data (restarted empty)
    some_user = events[0].user_id
    assert FeatureClient(client, project).get("user", [some_user])["clicks_30d"] == [None]
    done = subprocess.run(
        [CLI, "features", "rebuild", "--from", "kafka", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for view in ("user_stats", "note_stats"):
        want = expected_features(events, view)
        got = _features(redis_url, project, settings.data_dir, view, list(want.index))
        for column in want.columns:
            np.testing.assert_allclose(
                got[column].to_numpy(np.float64), want[column].to_numpy(np.float64), rtol=1e-12
            )
