"""The click history feature: what `HistoryWriter` stores, Feast and `FeatureClient` read alike."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from features import FeatureClient, mark_key
from features import definitions as repo_definitions
from features.errors import FeaturesError
from features.history import (
    HISTORY_FEATURE,
    HISTORY_VIEW,
    HistoryWriter,
    decode_history,
    history_key,
)
from features.online_writer import OnlineWriter
from features.schema import feature_types
from features.store import apply_definitions, feature_store, online_features

REF = f"{HISTORY_VIEW}:{HISTORY_FEATURE}"


@pytest.fixture
def project() -> str:
    return f"p{uuid.uuid4().hex[:8]}"


def test_client_history_equals_get_online_features(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, project: str
) -> None:
    store = feature_store(redis_url, project, tmp_path)
    apply_definitions(store, tmp_path)
    assert HISTORY_VIEW in {v.name for v in store.list_feature_views()}
    users = ["u-a", "u-b", "u-c", "u-é"]
    histories = [["n3", "n2", "n1"], [], ["x" * 300, "n,1", ""], ["ü"]]
    HistoryWriter(redis_client, project).write(users, histories, [1_000, 2_000, 3_000, 4_000])
    asked = [*users, "never-clicked"]
    client = FeatureClient.from_url(redis_url, project)

    got, stamps = client.history(asked)
    sdk = store.get_online_features(
        features=[REF], entity_rows=[{"user_id": u} for u in asked]
    ).to_dict()

    assert got == [*histories, []]
    assert sdk[HISTORY_FEATURE][:4] == histories
    assert sdk[HISTORY_FEATURE][4] is None  # Feast: nothing stored; the client: no history
    assert stamps.tolist() == [1_000, 2_000, 3_000, 4_000, -1]


def test_history_shares_the_users_hash_without_touching_the_stats(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, project: str
) -> None:
    store = feature_store(redis_url, project, tmp_path)
    apply_definitions(store, tmp_path)
    cols = {n: np.arange(2) + 7 for n in feature_types("user_stats")}
    OnlineWriter(redis_client, project).write("user_stats", ["u1", "u2"], cols, 5_000)
    before = online_features(store, "user_stats", ["u1", "u2"])
    HistoryWriter(redis_client, project).write(["u1"], [["n9"]], [6_000])

    assert online_features(store, "user_stats", ["u1", "u2"]) == before
    assert FeatureClient(redis_client, project).stored_at("user", ["u1"]) == [5_000]
    assert redis_client.exists(history_key(project, "u1")) == 1
    assert redis_client.hlen(history_key(project, "u1")) == len(feature_types("user_stats")) + 3


def test_later_entry_of_a_user_wins_and_the_mark_only_rises(
    redis_client: redis.Redis, project: str
) -> None:
    writer = HistoryWriter(redis_client, project)
    key = mark_key(project, "history")
    writer.write(["u1", "u1"], [["a"], ["b", "a"]], [10, 20], mark=(key, 20))
    writer.write(["u2"], [["c"]], [15], mark=(key, 15))
    client = FeatureClient(redis_client, project)
    assert client.history(["u1", "u2"])[0] == [["b", "a"], ["c"]]
    assert client.as_of("history") == 20
    with pytest.raises(FeaturesError, match="2 users, 1 histories"):
        writer.write(["u1", "u2"], [["a"]], [1, 2])


def test_a_field_of_another_type_is_refused_clearly() -> None:
    from feast.protos.feast.types.Value_pb2 import Value

    assert decode_history(None) == [] and decode_history(b"") == []
    with pytest.raises(FeaturesError, match="holds a int64_val"):
        decode_history(Value(int64_val=3).SerializeToString())


def test_the_feast_repo_defines_the_view_on_the_user_entity() -> None:
    view = repo_definitions.user_history
    assert view.name == HISTORY_VIEW and view.entities == ["user"]
    assert [f.name for f in view.features] == [HISTORY_FEATURE]
    assert str(view.features[0].dtype) == "Array(String)"
