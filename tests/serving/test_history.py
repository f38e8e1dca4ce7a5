"""/recommend reads the user's click history from the feature store and gives it to both models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import redis
from fastapi.testclient import TestClient

from features.history import HistoryWriter
from features.samples import STAT_FEATURES
from infra.config import load_settings
from infra.service import service_for
from serving.config import ContextConfig
from tests.learners.helpers import publish_trained
from tests.serving.helpers import serving_settings

LENGTH = 5


def test_recommend_passes_the_stored_history_to_both_models(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    publish_trained(tmp_path / "snapshots", history=LENGTH)
    base = load_settings(env={})
    settings = serving_settings(
        tmp_path / "snapshots",
        redis_url,
        # The two-tower channel alone: every item's retrieval score is the user tower's.
        serving=base.serving.model_copy(update={"context": ContextConfig(enabled=False)}),
    )
    service = service_for(settings, redis_url)
    service.watcher.refresh()
    client = TestClient(service.app)
    view = service.watcher.current()

    def recommend(user: str) -> dict:
        r = client.get("/recommend", params={"user_id": user, "n": 20})
        assert r.status_code == 200, r.text
        return r.json()

    blind = recommend("u5")
    assert blind["history"] == 0 and not blind["features_degraded"]  # none stored: works
    clicked = [f"n{i}" for i in (3, 1, 4, 15, 9, 2, 6)]  # newest first; more than the models read
    HistoryWriter(redis_client, settings.feast_project).write(["u5"], [clicked], [1_000])
    seen = recommend("u5")
    assert seen["history"] == LENGTH
    zeros = np.zeros(len(STAT_FEATURES))
    query = view.retriever.user_vector("u5", zeros, clicked[:LENGTH])
    assert not np.allclose(query, view.retriever.user_vector("u5", zeros))
    notes = [i["note_id"] for i in seen["items"]]
    got = np.array([i["retrieval_score"] for i in seen["items"]])
    _, vectors = view.retriever.item_vectors(notes)
    np.testing.assert_allclose(got, vectors @ query, rtol=1e-4, atol=1e-5)  # the user tower's
    authors, cats = view.retriever.side_info(notes)
    want = view.ranker.score(
        "u5", notes, authors, cats, zeros, np.zeros((len(notes), len(STAT_FEATURES))),
        durations=view.retriever.durations(notes), history=clicked[:LENGTH],
    )  # fmt: skip
    np.testing.assert_allclose([i["scores"]["click"] for i in seen["items"]], want["click"])
    assert [i["note_id"] for i in blind["items"]] != notes  # the history changed the answer

    HistoryWriter(redis_client, settings.feast_project).write(["u5"], [[]], [2_000])
    assert recommend("u5")["items"] == blind["items"]  # an empty history is no history
