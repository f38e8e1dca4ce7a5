"""`FeatureClient` returns what Feast's own `get_online_features` returns, and the job's mark."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from features import FeatureClient, mark_key
from features.errors import UnknownViewError
from features.online_writer import OnlineWriter
from features.schema import feature_types
from features.store import apply_definitions, feature_store, online_features


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and type(a) is type(b)


@pytest.mark.parametrize("entity", ["user", "note"])
def test_client_equals_get_online_features(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, entity: str
) -> None:
    project = f"p{uuid.uuid4().hex[:8]}"
    store = feature_store(redis_url, project, tmp_path)
    apply_definitions(store, tmp_path)
    view = f"{entity}_stats"
    rng = np.random.default_rng(5)
    edge_ints = np.array([0, 1, 127, 128, 300, 2**31, 2**53 + 1, 2**62, 2**63 - 1, -5])
    edge_floats = np.array([0.0, -0.0, 1.5, 1e-300, 1e300, np.inf, -np.inf, 0.1, 7.0, np.nan])
    stored = [f"{entity}-{i}" for i in range(25)]
    cols = {
        n: np.concatenate(
            [
                edge_ints if k == "int64" else edge_floats,
                rng.integers(0, 10**6, 15) if k == "int64" else rng.random(15),
            ]
        )
        for n, k in feature_types(view).items()
    }
    OnlineWriter(redis_client, project).write(view, stored, cols, 1_767_225_600_123)
    ids = [*stored[:10], "never-written", *stored[10:]]
    client = FeatureClient.from_url(redis_url, project)

    got = client.get(entity, ids)
    want = online_features(store, view, ids)

    assert set(got) == set(want) and next(iter(got)) == f"{entity}_id"
    for name in want:
        assert len(got[name]) == len(want[name])
        pairs = zip(got[name], want[name], strict=True)
        assert all(_same(g, w) for g, w in pairs), name
    assert client.stored_at(entity, ids) == [
        *[1_767_225_600_123] * 10,
        None,
        *[1_767_225_600_123] * 15,
    ]
    subset = client.get(view, ids[:3], ["clicks_1h", "ctr_7d"])
    assert subset == {
        want_key: want[want_key][:3] for want_key in (next(iter(want)), "clicks_1h", "ctr_7d")
    }


def test_as_of_is_the_jobs_mark(redis_client: redis.Redis) -> None:
    project = f"p{uuid.uuid4().hex[:8]}"
    client = FeatureClient(redis_client, project)
    assert client.as_of() is None
    redis_client.set(mark_key(project, "stats"), 1_700_000_000_000)
    assert client.as_of("stats") == 1_700_000_000_000
    redis_client.delete(mark_key(project, "stats"))


def test_unknown_entity_is_named(redis_client: redis.Redis) -> None:
    with pytest.raises(UnknownViewError, match="'author'"):
        FeatureClient(redis_client, "p").get("author", ["a1"])
