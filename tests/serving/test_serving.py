"""Serving: the faiss index, the snapshot watcher, fusion, the recommender and the API."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import faiss
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from infra.cli_serve import build_service
from infra.config import load_settings
from infra.stack import ensure_topics
from learners.online import OnlineLearner
from learners.snapshots import kafka_announcer
from serving.config import FusionConfig, ServingConfig
from serving.index import NoteIndex
from serving.watcher import SnapshotWatcher
from streams.config import ExposureConfig
from tests.learners.test_online import CONFIG, Clock, messages, publish_trained


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _exact(vectors: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    return np.argsort(-(vectors @ q), kind="stable")[:k].tolist()


def test_flat_index_is_exact_and_updates_without_touching_the_live_copy() -> None:
    vectors = _unit(2_000, 16, 0)
    ids = [f"n{i}" for i in range(2_000)]
    index = NoteIndex.build(ids, vectors)
    q = _unit(1, 16, 1)[0]
    got, scores = index.search(q, 50)
    assert got == [ids[j] for j in _exact(vectors, q, 50)]
    assert np.all(np.diff(scores) <= 1e-6)

    best = got[0]
    updated = index.updated([best, "fresh"], np.stack([-q, q]))
    assert len(updated) == 2_001 and len(index) == 2_000
    assert updated.search(q, 1)[0] == ["fresh"]
    assert best not in updated.search(q, 100)[0]  # replaced by its new vector
    assert index.search(q, 1)[0] == [best]  # the live copy is unchanged
    assert "fresh" in updated and "fresh" not in index


def test_hnsw_recall_at_100_against_exact() -> None:
    vectors = _unit(20_000, 32, 2)
    ids = [str(i) for i in range(len(vectors))]
    index = NoteIndex.build(ids, vectors, kind="hnsw")
    queries = _unit(30, 32, 3)
    recall = np.mean(
        [
            len(set(index.search(q, 100)[0]) & {ids[j] for j in _exact(vectors, q, 100)}) / 100
            for q in queries
        ]
    )
    assert recall >= 0.95
    moved = index.updated(["0"], queries[:1])
    assert moved.search(queries[0], 1)[0] == ["0"]
    assert faiss.__version__


def test_watcher_swaps_versions_and_follows_announcements(
    tmp_path: Path, bootstrap: str, topic_name: str
) -> None:
    snapshots = publish_trained(tmp_path)
    watcher = SnapshotWatcher(tmp_path, "ranker", "retriever", ServingConfig(poll_interval_s=60))
    assert watcher.refresh()
    first = watcher.current()
    assert first.versions == {"ranker": 1, "retriever": 1}
    ids, _ = first.retriever.item_vectors()
    assert len(first.index) == len(ids) > 0
    assert not watcher.refresh()  # nothing new

    topic = f"{topic_name}-snapshots"
    ensure_topics(bootstrap, [topic], 1)
    watcher.start(bootstrap, topic)
    try:
        watcher.refresh()
        clock = Clock()
        learner = OnlineLearner.from_latest(
            CONFIG, snapshots, announce=kafka_announcer(bootstrap, topic), clock=clock
        )
        deadline = time.monotonic() + 20
        while watcher.swaps == 1 and time.monotonic() < deadline:
            for m in messages(seed=21, n=600, users=300, t0=2 * 10**9):
                learner.add(m)
            clock.now += 11
            learner.flush()
            learner.tick()
            time.sleep(0.5)
        assert watcher.swaps > 1, "the announcement did not wake the watcher"
        second = watcher.current()
        assert second.versions["ranker"] > 1 and second.versions["retriever"] > 1
        # The first view is still whole: its index and models were not modified.
        assert first.versions == {"ranker": 1, "retriever": 1}
        assert len(first.index) == len(ids)
        new_ids, new_vecs = second.retriever.item_vectors()
        assert len(second.index) == len(new_ids)
        q = new_vecs[0]
        assert second.index.search(q, 1)[0] == [new_ids[0]]
    finally:
        watcher.stop()


def test_fusion_formulas() -> None:
    from serving.recommender import fuse

    preds = {
        "click": np.array([0.1, 0.5]),
        "like": np.array([0.2, 0.0]),
        "watch_ms": np.array([60_000.0, 0.0]),
    }
    plain = FusionConfig(
        weights={"click": 1, "like": 2, "watch": 1}, duration_adjusted_completion=False
    )
    np.testing.assert_allclose(fuse(preds, plain), [0.1 + 0.4 + 0.5, 0.5])
    product = plain.model_copy(update={"formula": "product"})
    np.testing.assert_allclose(fuse(preds, product), [1.1 * 1.2**2 * 1.5, 1.5])
    rank = plain.model_copy(update={"formula": "rank", "rank_k": 1.0})
    np.testing.assert_allclose(fuse(preds, rank), [0.5 + 2 + 1, 1 + 1.0 + 0.5])


@pytest.fixture
def service(tmp_path: Path, redis_url: str):
    publish_trained(tmp_path / "snapshots")
    ns = f"t{uuid.uuid4().hex[:6]}"
    settings = load_settings(env={"REDIS_URL": redis_url}).model_copy(
        update={
            "snapshots": load_settings(env={}).snapshots.model_copy(
                update={"root": tmp_path / "snapshots"}
            ),
            "exposure": ExposureConfig(namespace=ns),
            "feast_project": f"p{ns}",
        }
    )
    app, watcher = build_service(settings, redis_url)
    return app, watcher, settings


def test_api_recommends_filters_exposures_and_explains_bad_input(service, redis_url) -> None:
    from serving.exposure import ExposureWriter

    app, watcher, settings = service
    client = TestClient(app)
    assert client.get("/healthz").status_code == 503
    assert "learn full" in client.get("/recommend", params={"user_id": "u1"}).json()["detail"]
    watcher.refresh()
    assert client.get("/healthz").json()["status"] == "ok"

    r = client.get("/recommend", params={"user_id": "u1", "n": 10})
    assert r.status_code == 200
    body = r.json()
    assert len(body["items"]) == 10 and body["versions"] == {"ranker": 1, "retriever": 1}
    first = body["items"][0]
    assert {"click", "like", "completion", "watch_ms"} <= set(first["scores"])
    assert all(0 <= first["scores"][t] <= 1 for t in ("click", "like"))
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)

    writer = ExposureWriter(redis.Redis.from_url(redis_url), settings.exposure)
    shown = [i["note_id"] for i in body["items"][:3]]
    writer.add_batch(["u1"] * 3, shown, [10**12] * 3)
    again = client.get("/recommend", params={"user_id": "u1", "n": 10}).json()
    assert again["exposure_filtered"] and not set(shown) & {i["note_id"] for i in again["items"]}

    assert client.get("/recommend", params={"user_id": "u1", "n": 0}).status_code == 422
    assert client.get("/recommend").status_code == 422
    bad = client.get("/features/bogus/x")
    assert bad.status_code == 422 and "user" in bad.text
    missing = client.get("/features/note/never-written")
    assert missing.status_code == 404 and "never-written" in missing.json()["detail"]
    assert client.get(f"/notes/{shown[0]}").json()["in_index"] is True
    assert client.get("/notes/nope").json()["in_index"] is False
    metrics = client.get("/metrics").text
    assert 'streamrec_snapshot_version{model="ranker"} 1.0' in metrics
    assert 'streamrec_requests_total{endpoint="recommend",status="200"}' in metrics
