"""Serving: fusion, the recommender and the API (index and watcher: test_index, test_watcher)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from features.client import mark_key
from features.exposure import ExposureConfig, ExposureWriter
from features.online_writer import OnlineWriter
from features.redis_conn import connect
from features.schema import FeatureConfig, derive
from features.windows import METRICS, WINDOWS
from infra.config import load_settings
from infra.service import service_for
from serving.config import FusionConfig
from serving.recommender import fuse
from tests.learners.helpers import publish_trained


def test_fusion_formulas() -> None:
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


def test_duration_adjusted_completion_favours_completing_long_notes() -> None:
    preds = {  # same completion probability; note 0 is watched 4 min, note 1 for 6 s
        "completion": np.array([0.5, 0.5]),
        "watch_ms": np.array([240_000.0, 6_000.0]),
    }
    only_completion = FusionConfig(weights={"completion": 1.0})
    adjusted = fuse(preds, only_completion)
    watch = np.array([4 / 5, 0.1 / 1.1])  # m / (1 + m), m in minutes
    np.testing.assert_allclose(adjusted, 0.5 * (0.5 + watch))
    assert adjusted[0] > adjusted[1]
    plain = only_completion.model_copy(update={"duration_adjusted_completion": False})
    np.testing.assert_allclose(fuse(preds, plain), [0.5, 0.5])


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value of a Prometheus text page."""
    return {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for family in text_string_to_metric_families(text)
        for x in family.samples
    }


@pytest.fixture
def service(tmp_path: Path, redis_url: str):
    publish_trained(tmp_path / "snapshots", preranker=True)
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
    rerank = settings.serving.rerank.model_copy(update={"enabled": True})  # the whole funnel
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"rerank": rerank})}
    )
    service = service_for(settings, redis_url)
    app, watcher = service.app, service.watcher
    return app, watcher, settings


def test_exposed_notes_are_never_returned_and_every_task_is_scored(service, redis_url) -> None:
    app, watcher, settings = service
    watcher.refresh()
    tasks = {*watcher.current().ranker.tasks, "watch_ms"}
    client = TestClient(app)
    writer = ExposureWriter(connect(redis_url), settings.exposure)
    exposed: set[str] = set()
    for round_ in range(6):
        body = client.get("/recommend", params={"user_id": "u7", "n": 25}).json()
        got = [i["note_id"] for i in body["items"]]
        assert len(got) == 25 and len(set(got)) == 25
        assert not exposed & set(got), f"round {round_}: exposed notes returned"
        assert round_ == 0 or body["exposure_filtered"]
        for item in body["items"]:
            assert set(item["scores"]) == tasks
            assert all(0 <= item["scores"][t] <= 1 for t in tasks - {"watch_ms"})
            assert item["scores"]["watch_ms"] >= 0
        writer.add_batch(["u7"] * 25, got, [10**12] * 25)
        exposed |= set(got)
    other = client.get("/recommend", params={"user_id": "u8", "n": 25}).json()
    assert exposed & {i["note_id"] for i in other["items"]}  # filters are per user


def test_api_recommends_filters_exposures_and_explains_bad_input(service, redis_url) -> None:
    app, watcher, settings = service
    client = TestClient(app)
    before = _samples(client.get("/metrics").text)
    assert client.get("/healthz").json() == {"status": "alive"}  # liveness: always
    ready = client.get("/readyz")
    assert ready.status_code == 503 and not ready.json()["checks"]["snapshots"]["ok"]
    assert "learn full" in client.get("/recommend", params={"user_id": "u1"}).json()["detail"]
    watcher.refresh()
    assert client.get("/readyz").json()["status"] == "ready"

    r = client.get("/recommend", params={"user_id": "u1", "n": 10})
    assert r.status_code == 200
    body = r.json()
    assert len(body["items"]) == 10
    assert body["versions"] == {"ranker": 1, "retriever": 1, "preranker": 1}
    first = body["items"][0]
    assert {"click", "like", "completion", "watch_ms"} <= set(first["scores"])
    assert all(0 <= first["scores"][t] <= 1 for t in ("click", "like"))
    # every stage's score: candidates -> pre-rank to rank_k -> rank -> fuse -> re-rank
    stages = body["stages"]
    rank_k = settings.serving.rank_k
    assert stages["merged"] > rank_k and stages["prerank"] == stages["merged"]
    assert stages["rank"] == rank_k and stages["returned"] == 10
    items = body["items"]
    assert [i["rerank_position"] for i in items] == list(range(10))
    assert all(i["prerank_score"] is not None for i in items)
    assert all(0 <= i["prerank_position"] < stages["merged"] for i in items)
    assert all(0 <= i["fused_position"] < rank_k for i in items)
    assert all(i["channels"][0] == i["channel"] for i in items)  # the taker first
    fused_order = sorted(items, key=lambda i: i["fused_position"])
    assert [i["score"] for i in fused_order] == sorted((i["score"] for i in items), reverse=True)

    writer = ExposureWriter(connect(redis_url), settings.exposure)
    shown = [i["note_id"] for i in body["items"][:3]]
    writer.add_batch(["u1"] * 3, shown, [10**12] * 3)
    again = client.get("/recommend", params={"user_id": "u1", "n": 10}).json()
    assert again["exposure_filtered"] and not set(shown) & {i["note_id"] for i in again["items"]}

    for params, reason in [
        ({"user_id": "u1", "n": 0}, "greater than or equal to 1"),
        ({"user_id": "u1", "n": settings.serving.max_n + 1}, "less than or equal to 200"),
        ({"user_id": "u1", "n": "ten"}, "valid integer"),
        ({"user_id": ""}, "at least 1 character"),
        ({}, "Field required"),
    ]:
        r = client.get("/recommend", params=params)
        assert r.status_code == 422 and reason in r.text, (params, r.text)
        assert r.json()["detail"][0]["loc"][-1] in ("n", "user_id")
    bad = client.get("/features/bogus/x")
    assert bad.status_code == 422 and "'user' or 'note'" in bad.text
    missing = client.get("/features/note/never-written")
    assert missing.status_code == 404 and "never-written" in missing.json()["detail"]
    assert client.get(f"/notes/{shown[0]}").json()["in_index"] is True
    assert client.get("/notes/nope").json()["in_index"] is False
    text = client.get("/metrics").text
    after = _samples(text)

    def added(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert added("streamrec_requests_total", endpoint="/recommend", status="200") == 2
    assert added("streamrec_requests_total", endpoint="/recommend", status="503") == 1
    assert added("streamrec_requests_total", endpoint="/recommend", status="422") == 5
    assert added(
        "streamrec_requests_total", endpoint="/features/{entity}/{entity_id}", status="404"
    )
    assert added("streamrec_request_latency_seconds_count", endpoint="/recommend") == 8
    assert added("streamrec_request_latency_seconds_bucket", endpoint="/recommend", le="+Inf") == 8
    assert after[("streamrec_snapshot_version", (("model", "ranker"),))] == 1
    assert after[("streamrec_snapshot_version", (("model", "preranker"),))] == 1
    assert added("streamrec_stage_candidates_total", stage="rank") == 2 * settings.serving.rank_k
    assert added("streamrec_stage_candidates_total", stage="returned") == 20
    assert added("streamrec_stage_seconds_total", stage="prerank") > 0
    assert after[("streamrec_snapshot_age_seconds", (("model", "retriever"),))] >= 0
    assert after[("streamrec_index_notes", ())] == len(watcher.current().index)
    assert "streamrec_feature_freshness_seconds NaN" in text  # the stats job never wrote


def test_features_endpoint_and_freshness_metric(service, redis_url) -> None:
    app, _, settings = service
    client = TestClient(app)
    r = connect(redis_url)
    counts = {w.name: np.full((1, len(METRICS)), 4, np.int64) for w in WINDOWS}
    cols = derive("note_stats", counts, FeatureConfig())
    OnlineWriter(r, settings.feast_project).write("note_stats", ["n-x"], cols, 1_700_000_000_000)
    body = client.get("/features/note/n-x").json()
    assert body["event_ts_ms"] == 1_700_000_000_000 and body["entity"] == "note"
    assert body["features"] == {k: float(v[0]) for k, v in cols.items()}
    assert client.get("/features/user/n-x").status_code == 404  # a note, not a user

    r.set(mark_key(settings.feast_project, "stats"), int(time.time() * 1000) - 3_000)
    line = next(
        x
        for x in client.get("/metrics").text.splitlines()
        if x.startswith("streamrec_feature_freshness_seconds ")
    )
    assert 2.5 < float(line.split()[1]) < 60


def test_a_replica_reading_the_store_url_answers_recommend_identically(
    service, redis_url: str, s3_url: str
) -> None:
    """A second service whose settings name only the object store (`snapshots.url`, its own
    root an empty directory) answers `/recommend` as the first, for several users."""
    import fsspec

    app, watcher, settings = service
    root = settings.snapshots.root
    fsspec.filesystem("s3").put(f"{root}/", s3_url.removeprefix("s3://"), recursive=True)
    empty = root.parent / "replica-has-no-copy"
    empty.mkdir()
    remote = settings.model_copy(
        update={"snapshots": settings.snapshots.model_copy(update={"root": empty, "url": s3_url})}
    )
    replica = service_for(remote, redis_url)
    watcher.refresh()
    replica.watcher.refresh()
    first, second = TestClient(app), TestClient(replica.app)
    for user in ("u1", "u7", "u42", "never-seen"):
        want = first.get("/recommend", params={"user_id": user, "n": 20}).json()
        got = second.get("/recommend", params={"user_id": user, "n": 20}).json()
        assert [i["note_id"] for i in got["items"]] == [i["note_id"] for i in want["items"]]
        assert [i["scores"] for i in got["items"]] == [i["scores"] for i in want["items"]]
    assert not any(empty.iterdir())


def test_cached_note_statistics_give_the_answers_of_fresh_reads(service, redis_url) -> None:
    """The note statistics cache (`prerank.stats_max_age_s`, the ranker taking the pre-ranker's
    counts by default: `prerank.rank_from_cache`) changes no answer while the stored counts
    stay; with `rank_from_cache` off, when the counts change the ranker's scores follow at once
    (its `rank_k` notes are read fresh), as a service without the cache scores them."""
    app, watcher, settings = service
    watcher.refresh()
    notes, _ = watcher.current().retriever.item_vectors()
    rng = np.random.default_rng(3)
    writer = OnlineWriter(connect(redis_url), settings.feast_project)

    def write_counts() -> None:
        counts = {w.name: rng.poisson(20, (len(notes), len(METRICS))) for w in WINDOWS}
        cols = derive("note_stats", counts, FeatureConfig())
        writer.write("note_stats", notes, cols, 1_700_000_000_000)

    write_counts()

    def client_with(**prerank: object) -> TestClient:
        changed = settings.serving.prerank.model_copy(update=prerank)
        serving = settings.serving.model_copy(update={"prerank": changed})
        other = service_for(settings.model_copy(update={"serving": serving}), redis_url)
        other.watcher.refresh()
        return TestClient(other.app)

    cached, uncached = TestClient(app), client_with(stats_max_age_s=0.0)
    rank_fresh = client_with(rank_from_cache=False)
    assert settings.serving.prerank.stats_max_age_s >= 1.0  # the cache is on by default
    assert settings.serving.prerank.rank_from_cache

    def answers(client: TestClient, user: str) -> list[tuple]:
        body = client.get("/recommend", params={"user_id": user, "n": 20}).json()
        assert body["stages"]["prerank"] > settings.serving.rank_k
        return [(i["note_id"], i["scores"], i["prerank_score"]) for i in body["items"]]

    for user in ("u1", "u7", "u1"):  # the second u1: every note's counts from the cache
        want = answers(uncached, user)
        assert answers(cached, user) == want
        assert answers(rank_fresh, user) == want
    write_counts()  # the store moves on; the caches still hold the old counts
    got, want = answers(rank_fresh, "u7"), answers(uncached, "u7")
    by_note = {n: s for n, s, _ in want}
    common = [(n, s) for n, s, _ in got if n in by_note]
    assert common and all(s == by_note[n] for n, s in common)
