"""The batched reader returns exactly what Feast's `get_online_features` returns."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from features.errors import FeaturesError
from features.online_reader import OnlineReader
from features.online_writer import OnlineWriter
from features.schema import feature_types
from features.store import apply_definitions, feature_store, online_features


@pytest.mark.parametrize("view", ["user_stats", "note_stats"])
def test_reader_equals_get_online_features(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, view: str
) -> None:
    store = feature_store(redis_url, f"p{uuid.uuid4().hex[:8]}", tmp_path)
    apply_definitions(store, tmp_path)
    rng = np.random.default_rng(3)
    names = list(feature_types(view))
    stored = [f"e{i}" for i in range(30)]
    edge_ints = np.array([0, 1, -1, 127, 128, 300, 2**31, -(2**40), 2**62, 2**63 - 1])
    edge_floats = np.array([0.0, -0.0, 1.5, -2.25, 1e-300, 1e300, np.inf, -np.inf, 0.1, 7.0])
    cols = {
        n: np.concatenate(
            [
                edge_ints if k == "int64" else edge_floats,
                rng.integers(0, 10**9, 20) if k == "int64" else rng.random(20) * 100,
            ]
        )
        for n, k in feature_types(view).items()
    }
    OnlineWriter(redis_client, store.project).write(view, stored, cols, 1_767_225_600_123)
    ids = [*stored[:20], "never-written", *stored[20:]]

    values, stamps = OnlineReader(redis_client, store.project).read(view, ids, names)

    feast = online_features(store, view, ids)
    for j, name in enumerate(names):
        expected = [np.nan if v is None else float(v) for v in feast[name]]
        np.testing.assert_array_equal(values[:, j], expected, err_msg=name)
        assert [np.signbit(v) for v in values[:, j]] == [np.signbit(v) for v in expected]
    assert stamps[20] == -1
    assert set(stamps[np.arange(len(ids)) != 20]) == {1_767_225_600_123}


def test_unknown_feature_is_named(redis_client: redis.Redis) -> None:
    with pytest.raises(FeaturesError, match="no_such_feature"):
        OnlineReader(redis_client, "p").read("note_stats", ["n1"], ["no_such_feature"])
