"""The fast writer produces exactly what Feast's own push produces; the repo applies cleanly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from features.errors import FeaturesError
from features.online_writer import OnlineWriter
from features.redis_conn import is_cluster
from features.schema import ENTITY_KEY, FeatureConfig, derive, feature_types
from features.store import (
    REPO,
    apply_definitions,
    connection_string,
    feature_store,
    online_features,
)
from features.windows import METRICS, WINDOWS

EDGE_INTS = np.array(
    [0, 1, -1, 127, 128, 300, 16383, 16384, 65535, 65536, 2**31, -(2**40), 2**62, 2**63 - 1]
)
EDGE_FLOATS = np.array(
    [0.0, -0.0, 1.5, -2.25, 1e-300, 1e300, np.inf, -np.inf, 0.1, 7.0, 3.0, -1e-9, 2.5e8, 1 / 3]
)


@pytest.fixture
def store(redis_url: str, tmp_path: Path):
    project = f"p{uuid.uuid4().hex[:8]}"
    fs = feature_store(redis_url, project, tmp_path)
    apply_definitions(fs, tmp_path)
    return fs


def _columns(view: str, shift: int) -> dict[str, np.ndarray]:
    cols = {}
    for i, (name, kind) in enumerate(feature_types(view).items()):
        base = EDGE_INTS if kind == "int64" else EDGE_FLOATS
        cols[name] = np.roll(base, i + shift)
    return cols


@pytest.mark.parametrize("view", ["user_stats", "note_stats"])
def test_writer_bytes_equal_feast_push(store, redis_client: redis.Redis, view: str) -> None:
    key = ENTITY_KEY[view]
    ids = [f"{view[0]}{i}" for i in range(len(EDGE_INTS))]
    cols = _columns(view, 3)
    ts = 1_767_225_600_123
    at = pd.Timestamp(ts, unit="ms", tz="UTC")
    # A push carries the batch source's columns: event_ts and `created` (the log's tie-breaker).
    frame = pd.DataFrame({key: ids, "event_ts": at, "created": at, **cols})
    store.push(f"{view}_push", frame)
    writer = OnlineWriter(redis_client, store.config.project)
    keys = [writer.redis_key(view, i) for i in ids]
    by_push = [redis_client.hgetall(k) for k in keys]
    read_push = online_features(store, view, ids)
    assert all(len(h) == len(feature_types(view)) + 1 for h in by_push)
    redis_client.delete(*keys)
    writer.write(view, ids, cols, ts)
    assert [redis_client.hgetall(k) for k in keys] == by_push
    assert online_features(store, view, ids) == read_push
    assert read_push[next(iter(cols))] == [int(v) for v in cols[next(iter(cols))]]
    redis_client.delete(*keys)


@pytest.mark.parametrize("view", ["user_stats", "note_stats"])
def test_redis_keys_are_feasts_serialized_entity_keys(view: str) -> None:
    ids = ["u1", "", "n" * 300, "n\u00f1ot\u00e9\u2192\U0001f600", "a:b c"]
    writer = OnlineWriter(redis.Redis(), "proj")
    expected = [
        serialize_entity_key(
            EntityKeyProto(join_keys=[ENTITY_KEY[view]], entity_values=[ValueProto(string_val=i)]),
            entity_key_serialization_version=3,
        )
        + b"proj"
        for i in ids
    ]
    assert writer.redis_keys(view, ids) == expected
    assert [writer.redis_key(view, i) for i in ids] == expected
    with pytest.raises(FeaturesError, match="unknown feature view"):
        writer.redis_keys("nope", ids)


def test_later_write_replaces_earlier(store, redis_client: redis.Redis) -> None:
    writer = OnlineWriter(redis_client, store.config.project)
    first, second = _columns("user_stats", 0), _columns("user_stats", 5)
    writer.write("user_stats", ["u1"], {k: v[:1] for k, v in first.items()}, 1_000)
    writer.write("user_stats", ["u1"], {k: v[:1] for k, v in second.items()}, 2_000)
    got = online_features(store, "user_stats", ["u1"])
    assert got["clicks_1h"] == [int(second["clicks_1h"][0])]
    assert got["clicks_1h"] != [int(first["clicks_1h"][0])]


def test_ttl_is_set_when_configured(store, redis_client: redis.Redis) -> None:
    writer = OnlineWriter(redis_client, store.config.project, key_ttl_seconds=3600)
    cols = {k: v[:2] for k, v in _columns("note_stats", 0).items()}
    writer.write("note_stats", ["n1", "n2"], cols, 5)
    ttls = [redis_client.ttl(writer.redis_key("note_stats", i)) for i in ("n1", "n2")]
    assert all(0 < t <= 3600 for t in ttls)


def test_missing_columns_and_unknown_view_are_clear(redis_client: redis.Redis) -> None:
    writer = OnlineWriter(redis_client, "p")
    with pytest.raises(FeaturesError, match="unknown feature view"):
        writer.write("nope", ["a"], {}, 1)
    with pytest.raises(FeaturesError, match="columns missing"):
        writer.write("user_stats", ["a"], {"clicks_1h": np.array([1])}, 1)


def test_derive_matches_hand_computation() -> None:
    counts = np.zeros((2, len(METRICS)), dtype=np.int64)
    idx = {m: i for i, m in enumerate(METRICS)}
    counts[0, idx["impressions"]], counts[0, idx["clicks"]] = 80, 10
    counts[0, idx["plays"]], counts[0, idx["watch_ms"]] = 4, 10_000
    counts[0, idx["completions"]], counts[0, idx["expected_completions_milli"]] = 3, 2_000
    config = FeatureConfig(prior_strength=20, ctr_prior=0.1, completion_prior=0.3)
    out = derive("note_stats", {w.name: counts for w in WINDOWS}, config)
    assert out["ctr_1h"][0] == pytest.approx((10 + 2) / (80 + 20))
    assert out["ctr_1h"][1] == pytest.approx(0.1)  # no data: the prior
    assert out["avg_watch_ms_7d"][0] == pytest.approx(2_500)
    assert out["avg_watch_ms_7d"][1] == 0
    assert out["completion_rate_1d"][0] == pytest.approx((3 + 6) / (4 + 20))
    assert out["completion_rate_adj_30d"][0] == pytest.approx((3 + 20) / (2 + 20))
    assert out["completion_rate_adj_30d"][1] == pytest.approx(1.0)
    assert list(out) == list(feature_types("note_stats"))
    assert "completion_rate_adj_1h" not in feature_types("user_stats")


def test_feast_apply_cli_on_a_fresh_copy(tmp_path: Path, redis_url: str) -> None:
    repo = tmp_path / "features"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns("__pycache__"))
    data_dir = tmp_path / "data"
    env = {**os.environ, "REDIS_URL": redis_url, "STREAMREC_DATA_DIR": str(data_dir)}
    feast = Path(sys.executable).with_name("feast")
    done = subprocess.run(
        [feast, "apply"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Deploying infrastructure for user_stats" in done.stdout + done.stderr
    assert (data_dir / "feast" / "registry-streamrec.db").exists()  # not inside the repo
    assert not list(repo.rglob("*.db"))
    listed = _feast_list(repo, env)
    assert "note_stats" in listed and "user_stats" in listed


def _feast_list(repo: Path, env: dict[str, str]) -> str:
    feast = Path(sys.executable).with_name("feast")
    done = subprocess.run(
        [feast, "-c", str(repo), "feature-views", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.stdout


@pytest.mark.single_redis  # the registry is the subject; the apply test runs on both
def test_feast_cli_shows_what_the_jobs_registered(tmp_path: Path, redis_url: str) -> None:
    """`feast -c features feature-views list` reads the registry the jobs write (same data dir)."""
    env = {**os.environ, "REDIS_URL": redis_url, "STREAMREC_DATA_DIR": str(tmp_path)}
    assert "user_stats" not in _feast_list(REPO, env)  # nothing registered here yet
    apply_definitions(feature_store(redis_url, "streamrec", tmp_path), tmp_path)  # as `run stats`
    listed = _feast_list(REPO, env)
    assert "note_stats" in listed and "user_stats" in listed


def test_redis_url_becomes_feasts_connection_string() -> None:
    assert connection_string("redis://127.0.0.1:6379/13") == "127.0.0.1:6379,db=13"
    assert connection_string("rediss://app:p%40ss@cache.local:6380/2") == (
        "cache.local:6380,db=2,ssl=true,username=app,password=p@ss"
    )
    with pytest.raises(FeaturesError, match="redis://"):
        connection_string("http://cache.local")


@pytest.mark.single_redis  # on a cluster `poll` is `collect` (a pipeline per node)
def test_poll_reads_what_arrived_and_collect_the_rest(store, redis_client: redis.Redis) -> None:
    """`poll` never waits: it returns the replies still outstanding; once `collect` returns,
    none are, and the rows read back as written."""
    assert not is_cluster(redis_client)
    writer = OnlineWriter(redis_client, store.config.project)
    cols = _columns("note_stats", 2)
    ids = [f"n{i}" for i in range(len(EDGE_INTS))]
    for shift in range(3):
        writer.send("note_stats", ids, {k: np.roll(v, shift) for k, v in cols.items()}, 7)
    sent = 3 * len(ids)
    assert writer.unread == sent
    left = writer.poll()
    assert 0 <= left <= sent
    assert writer.unread == left
    writer.collect()
    assert writer.unread == 0
    assert writer.poll() == 0
    got = online_features(store, "note_stats", ids)
    assert got["clicks_1d"] == [int(v) for v in np.roll(cols["clicks_1d"], 2)]


@pytest.mark.single_redis
def test_poll_raises_what_redis_refused(redis_client: redis.Redis) -> None:
    assert not is_cluster(redis_client)
    key = f"str-{uuid.uuid4().hex}"
    redis_client.set(key, "not a hash")
    writer = OnlineWriter(redis_client, "p")
    writer.send_command("HSET", key, "f", "v")
    deadline = time.monotonic() + 10
    with pytest.raises(FeaturesError, match="refused 1 writes"):
        while writer.poll() and time.monotonic() < deadline:  # until Redis's reply arrives
            pass
    redis_client.delete(key)
