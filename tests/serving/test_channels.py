"""Retrieval channels: the quota merge, the slot reservation, and the context channel in
/recommend (a user placed by what they were shown and clicked, before any trained row)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import redis
from fastapi.testclient import TestClient

from features.exposure import ExposureWriter
from features.history import HistoryWriter
from infra.service import service_for
from serving.channels import Candidates, merge_found
from serving.config import ContextConfig
from serving.recommender import blend_found
from tests.learners.helpers import publish_trained
from tests.serving.helpers import serving_settings


def test_merge_takes_each_channel_quota_in_order_without_duplicates() -> None:
    a = Candidates("a", ["n1", "n2", "n3", "n4"], np.array([4.0, 3.0, 2.0, 1.0]))
    b = Candidates("b", ["n2", "n5", "n1", "n6", "n7"], np.array([0.9, 0.8, 0.7, 0.6, 0.5]))
    merged = merge_found([a, b], [2, 3], 100)
    assert merged.ids == ["n1", "n2", "n5", "n6", "n7"]  # b's n2, n1 are a's: b takes 3 new
    assert merged.channel == ["a", "a", "b", "b", "b"]
    np.testing.assert_allclose(merged.scores, [4.0, 3.0, 0.8, 0.6, 0.5])
    assert merge_found([a, b], [0, 1], 100).ids == ["n2"]


def test_blend_reserves_slots_for_a_channel_and_keeps_the_fused_order() -> None:
    fused = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
    found = [["t"], ["t"], ["t"], ["c"], ["c"], ["c"]]
    assert blend_found(fused, found, {"c": 0}, 3).tolist() == [0, 1, 2]  # no reservation
    assert blend_found(fused, found, {"c": 2}, 3).tolist() == [0, 5, 4]  # c's best two, in order
    assert blend_found(fused, found, {"c": 5}, 4).tolist() == [0, 5, 4, 3]  # c has only three


def test_blend_keeps_a_channels_group_mix_and_lets_the_ranker_pick_within() -> None:
    fused = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3])
    found = [["c"]] * 7
    group = ["a", "a", "a", "a", "b", "b", "b"]
    # by fused alone the 3 slots go to group a; with slots a:1, b:2 the best of each
    assert blend_found(fused, found, {"c": 3}, 3).tolist() == [0, 1, 2]
    got = blend_found(fused, found, {"c": 3}, 3, {"c": (group, {"a": 1, "b": 2})})
    assert got.tolist() == [0, 4, 5]
    # a group short of its slots: the channel's best of the rest fill them
    got = blend_found(fused, found, {"c": 4}, 4, {"c": (group, {"b": 4})})
    assert got.tolist() == [0, 4, 5, 6]


def test_context_channel_places_a_user_by_what_they_were_shown_and_clicked(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    publish_trained(tmp_path / "snapshots")
    settings = serving_settings(tmp_path / "snapshots", redis_url)
    service = service_for(settings, redis_url)
    service.watcher.refresh()
    client = TestClient(service.app)
    view = service.watcher.current()
    popular = service.recommender.context.popularity(view)

    def recommend(user: str) -> list[dict]:
        r = client.get("/recommend", params={"user_id": user, "n": 20})
        assert r.status_code == 200, r.text
        return r.json()["items"]

    cold = recommend("stranger")  # nothing known: no reservation, the ranker decides
    assert len(cold) == 20
    target = sorted(popular.by_category)[3]
    shown = popular.by_category[target][:4]
    ExposureWriter(redis_client, settings.exposure).add_batch(["stranger"] * 4, shown, [10**12] * 4)
    HistoryWriter(redis_client, settings.feast_project).write(["stranger"], [shown[:1]], [1_000])
    placed = recommend("stranger")
    assert len(placed) == 20 and not {i["note_id"] for i in placed} & set(shown)
    context = [i for i in placed if i["channel"] == "context"]
    assert len(context) == 20  # share 1: every slot is the channel's
    _, cats = view.retriever.side_info([i["note_id"] for i in context])
    assert set(cats) == {target}  # the only category with evidence
    scores = [i["score"] for i in placed]
    assert scores == sorted(scores, reverse=True)

    # evidence for a second category: the answer keeps the channel's mix of the two
    other = sorted(popular.by_category)[5]
    more = popular.by_category[other][:7]
    ExposureWriter(redis_client, settings.exposure).add_batch(["stranger"] * 7, more, [10**12] * 7)
    lists, _ = service.recommender.candidates_by_channel("stranger", 20)
    channel = next(c for c in lists if c.channel == "context")
    _, want = view.retriever.side_info(channel.ids[:20])
    assert set(want) == {target, other}
    mixed = recommend("stranger")
    _, got = view.retriever.side_info([i["note_id"] for i in mixed if i["channel"] == "context"])
    assert sorted(got) == sorted(want)

    off = settings.model_copy(
        update={
            "serving": settings.serving.model_copy(update={"context": ContextConfig(enabled=False)})
        }
    )
    plain = service_for(off, redis_url)
    plain.watcher.refresh()
    items = TestClient(plain.app).get("/recommend", params={"user_id": "stranger"}).json()["items"]
    assert items and all(i["channel"] == "two_tower" for i in items)
