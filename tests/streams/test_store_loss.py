"""A running stats job finds that Redis lost its data and rewrites every entity from its state."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import redis

from features.client import FeatureClient
from features.redis_conn import connect
from features.windows import METRICS, WINDOWS
from infra.config import Settings
from streams.online_sink import FeastOnlineSink
from streams.reference import expected_features
from streams.sources.synthetic import SyntheticConfig
from streams.stats import StatsFlush
from tests.streams.helpers import (
    cli_env,
    replayed_topic,
    start_job,
    synthetic_events,
    wait_for,
)


def _complete(features: FeatureClient, entity: str, ids: list[str]) -> bool:
    return all(v is not None for v in features.get(entity, ids, ["impressions_30d"])[
        "impressions_30d"
    ])  # fmt: skip


def test_a_running_stats_job_rewrites_what_redis_lost(
    bootstrap: str, settings: Settings, redis_url: str, topic_name: str, tmp_path: Path
) -> None:
    events = synthetic_events(SyntheticConfig(seed=4, users=50, notes=120), 3_000)
    config, project = replayed_topic(bootstrap, topic_name, tmp_path, events)
    job = start_job(
        ["run", "stats", "--config", str(config)], cli_env(settings.data_dir, redis_url)
    )
    client = connect(redis_url)
    features = FeatureClient(client, project)
    users = sorted({e.user_id for e in events})
    notes = sorted({e.note_id for e in events})
    try:
        wait_for(
            lambda: features.as_of() == events[-1].ts and _complete(features, "user", users),
            timeout=120,
            what="the job to write every user",
        )
        lost = [k for k in client.scan_iter(count=1_000) if project.encode() in k]
        client.delete(*lost)  # Redis lost the job's data (restarted empty) while it runs idle
        assert not _complete(features, "user", users)
        wait_for(
            lambda: _complete(features, "user", users) and _complete(features, "note", notes),
            timeout=60,
            what="the job to rewrite every entity without new events",
        )
        for entity, view in (("user", "user_stats"), ("note", "note_stats")):
            want = expected_features(events, view)
            got = features.get(entity, list(want.index), list(want.columns))
            for column in want.columns:
                np.testing.assert_allclose(
                    np.asarray(got[column], dtype=np.float64),
                    want[column].to_numpy(np.float64),
                    rtol=1e-12,
                    err_msg=f"{view}.{column}",
                )
    finally:
        job.kill()
        job.wait(30)


def test_the_stats_sink_sends_again_what_a_redis_failure_lost(redis_url: str) -> None:
    """Replies of a pipelined batch lost to a connection failure: the batch is written again."""
    project = f"p{uuid.uuid4().hex[:8]}"
    sink = FeastOnlineSink(redis_url, project, shards=1)
    part = sink.build_part("online", "u0", None)
    counts = {w.name: np.full((2, len(METRICS)), 3, np.int64) for w in WINDOWS}
    first = StatsFlush("user_stats", ["a", "b"], counts, 1_000, None)
    part.write_batch([first])  # pipelined: its replies are read at the next batch
    failures = iter([redis.ConnectionError("Connection reset by peer")])
    collect = part._writer.collect

    def flaky() -> None:
        failure = next(failures, None)
        if failure is not None:
            part._writer._drop_connection()  # what a reset connection does to the writer
            raise failure
        collect()

    part._writer.collect = flaky
    second = StatsFlush("user_stats", ["c"], {w: c[:1] for w, c in counts.items()}, 2_000, None)
    part.write_batch([second])
    part.snapshot()
    got = FeatureClient.from_url(redis_url, project).get("user", ["a", "b", "c"], ["clicks_1h"])
    assert got["clicks_1h"] == [3, 3, 3]
    part.close()
