"""The co-click job's channels (ItemCF, Swing, author, fresh), the found-by merge and the
reservations of returned slots."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from features.history import HistoryWriter
from features.neighbours import FreshNote, NeighbourStore
from infra.service import service_for
from serving.channels import (
    FEATURES_PER_CHANNEL,
    RANK_BINS,
    AuthorChannel,
    Candidates,
    FreshChannel,
    MergeModel,
    MergeSample,
    NeighbourChannel,
    Request,
    fit_merge,
    load_merge_model,
    merge_calibrated,
    merge_found,
    merge_learned,
)
from serving.config import ChannelsConfig
from serving.errors import MergeModelError
from serving.recommender import blend_found
from tests.learners.helpers import publish_trained
from tests.serving.helpers import serving_settings

SIDE = {"h1": ("a1", "c1"), "h2": ("a2", "c2"), "h3": ("a1", "c1")}


class _Retriever:
    def side_info(self, notes: list[str]) -> tuple[list[str], list[str]]:
        rows = [SIDE.get(n, ("", "")) for n in notes]
        return [r[0] for r in rows], [r[1] for r in rows]


def _request(history: list[str]) -> Request:
    view = SimpleNamespace(retriever=_Retriever())
    return Request("u", np.zeros(3), history, view)  # type: ignore[arg-type]


@pytest.fixture
def store(redis_client: redis.Redis) -> Iterator[NeighbourStore]:
    """A store under a fresh prefix, its keys deleted afterwards."""
    project = f"test-ch-{uuid.uuid4().hex[:8]}"
    yield NeighbourStore(redis_client, project)
    keys = list(redis_client.scan_iter(match=f"{project}:*", count=1_000))
    if keys:
        redis_client.delete(*keys)


def test_neighbour_channel_sums_similarity_over_the_last_clicks(store: NeighbourStore) -> None:
    store.write(
        {
            "itemcf": {
                "h1": (["x", "y", "h2"], [0.5, 0.4, 0.9]),
                "h2": (["y", "z"], [0.3, 0.1]),
                "h3": (["w"], [5.0]),
            }
        }
    )
    channel = NeighbourChannel("itemcf", store, ChannelsConfig(history=2))
    got = channel.candidates(_request(["h1", "h2", "h3"]), 3)  # h3 is beyond the history
    assert got.ids == ["y", "x", "z"]  # y: 0.4 + 0.3; the clicked h2 is left out
    np.testing.assert_allclose(got.scores, [0.7, 0.5, 0.1])
    assert (
        NeighbourChannel("swing", store, ChannelsConfig()).candidates(_request(["h1"]), 5).ids == []
    )


def test_author_channel_takes_the_newest_notes_of_clicked_authors(store: NeighbourStore) -> None:
    store.write(
        {},
        authors={"a1": {"p": 1, "q": 3, "h1": 4}, "a2": {"r": 2}, "a9": {"s": 9}},
        per_author=10,
    )
    got = AuthorChannel(store, ChannelsConfig(per_author=2)).candidates(
        _request(["h1", "h2", "h3"]), 10
    )
    # a1 (two clicks) before a2; its two newest are h1 (clicked: left out) and q
    assert got.ids == ["q", "r"]
    np.testing.assert_allclose(got.scores, [2.0 / 2, 1.0])


def test_fresh_channel_puts_the_users_categories_first(store: NeighbourStore) -> None:
    store.write(
        {},
        fresh=[
            FreshNote("f1", 10, "c9", "", 0),
            FreshNote("f2", 20, "c1", "", 5),
            FreshNote("f3", 30, "c9", "", 1),
        ],
    )
    channel = FreshChannel(store, ChannelsConfig())
    got = channel.candidates(_request(["h1"]), 10)
    assert got.ids == ["f2", "f1", "f3"] and got.personal
    cold = channel.candidates(_request([]), 10)
    assert cold.ids == ["f1", "f3", "f2"] and not cold.personal  # the least shown first


def test_merge_found_fills_with_the_last_channel_and_remembers_every_finder() -> None:
    a = Candidates("a", ["n1", "n2", "n3"], np.array([3.0, 2.0, 1.0]))
    b = Candidates("b", ["n2", "n4", "n5"], np.array([0.9, 0.8, 0.7]))
    t = Candidates("t", ["n3", "n6", "n1", "n7"], np.array([0.5, 0.4, 0.3, 0.2]))
    m = merge_found([a, b, t], [2, 1, None], 5)
    assert m.ids == ["n1", "n2", "n4", "n3", "n6"]
    assert m.channel == ["a", "a", "b", "t", "t"]
    assert m.channels == [["a", "t"], ["a", "b"], ["b"], ["a", "t"], ["t"]]
    np.testing.assert_allclose(m.scores, [3.0, 2.0, 0.8, 0.5, 0.4])
    short = merge_found([a, b, t], [0, 0, None], 3)  # the filler takes what the others left
    assert short.ids == ["n3", "n6", "n1"]


def test_merge_calibrated_sums_each_channels_rank_evidence() -> None:
    a = Candidates("a", ["n1", "n2", "n3"], np.array([3.0, 2.0, 1.0]))
    b = Candidates("b", ["n3", "n4", "n1"], np.array([0.9, 0.8, 0.7]))
    off = Candidates("off", ["n9"], np.array([5.0]))  # no table: adds nothing
    rates = {"a": np.array([0.3, 0.2, 0.05]), "b": np.array([0.1, 0.04])}
    m = merge_calibrated([a, b, off], rates, 3)
    # n1 0.3 + 0.04 (rank 2 takes b's last value), n3 0.05 + 0.1, n2 0.2, n4 0.04
    assert m.ids == ["n1", "n2", "n3"]
    assert m.channel == ["a", "a", "b"]
    assert m.channels == [["a", "b"], ["a"], ["b", "a"]]
    np.testing.assert_allclose(m.scores, [0.34, 0.2, 0.15])
    assert merge_calibrated([a, b], {"b": rates["b"]}, 5).ids == ["n3", "n4", "n1"]
    # a large power: each note nearly its best channel's evidence (n3 0.1 < n2 0.2)
    high = merge_calibrated([a, b], rates, 3, power=50.0)
    assert high.ids == ["n1", "n2", "n3"]
    np.testing.assert_allclose(high.scores, [0.3, 0.2, 0.1], rtol=1e-3)


def _model(weights: dict[int, float], channels: tuple[str, ...] = ("a", "b")) -> MergeModel:
    size = FEATURES_PER_CHANNEL * len(channels) + 1
    w = np.zeros(size)
    for j, v in weights.items():
        w[j] = v
    return MergeModel(channels, np.zeros(size), np.ones(size), w)


def test_merge_learned_orders_the_union_by_the_model_and_keeps_reserved_places() -> None:
    a = Candidates("a", ["n1", "n2", "n3"], np.array([3.0, 2.0, 1.0]))
    b = Candidates("b", ["n3", "n4"], np.array([0.9, 0.8]))
    other = Candidates("c", ["n5"], np.array([1.0]))  # unknown to the model: no evidence
    # b's rank 0 worth 5, each finding channel 1, a's log rank -1
    model = _model({FEATURES_PER_CHANNEL: 5.0, 2 * FEATURES_PER_CHANNEL: 1.0, RANK_BINS: -1.0})
    m = merge_learned([a, b, other], model, 4)
    # n3: 5 + 2 - log 3; n1: 1; n4: 1; n2: 1 - log 2; n5: 0
    assert m.ids == ["n3", "n1", "n4", "n2"]
    np.testing.assert_allclose(m.scores, [7.0 - np.log(3.0), 1.0, 1.0, 1.0 - np.log(2.0)])
    assert m.channel == ["a", "a", "b", "a"]
    assert m.channels == [["a", "b"], ["a"], ["b"], ["a"]]
    kept = merge_learned([a, b, other], model, 3, {"c": 1})  # c's first place guaranteed
    assert kept.ids == ["n3", "n1", "n5"]
    assert merge_learned([], model, 3).ids == []


def test_fit_merge_learns_which_channel_finds_the_clicked_note(tmp_path: Path) -> None:
    """Channel "good" has the clicked note in its first three, "noise" anywhere in its 50:
    the fitted merge puts it in the top three for nearly every held-out user, and a model read
    back from its file merges identically."""
    rng = np.random.default_rng(3)

    def sample() -> MergeSample:
        notes = [f"n{j}" for j in rng.permutation(200)]
        target = notes[0]
        good = notes[1:20]
        good.insert(int(rng.integers(3)), target)
        noise = notes[20:69]
        noise.insert(int(rng.integers(50)), target)
        lists = [
            Candidates("noise", noise, np.linspace(1.0, 0.5, 50)),
            Candidates("good", good, np.linspace(2.0, 1.0, 20)),
        ]
        return MergeSample(lists, frozenset([target]))

    model = fit_merge([sample() for _ in range(200)], ("noise", "good"))
    held_out = [sample() for _ in range(100)]
    top3 = [next(iter(s.clicked)) in merge_learned(s.lists, model, 3).ids for s in held_out]
    assert np.mean(top3) >= 0.95
    first_noise = [merge_learned(s.lists, model, 1).ids == s.lists[0].ids[:1] for s in held_out]
    assert np.mean(first_noise) < 0.2
    path = tmp_path / "merge.json"
    path.write_text(json.dumps(model.to_json()))
    again = load_merge_model(path)
    for s in held_out:
        read, fitted = merge_learned(s.lists, again, 20), merge_learned(s.lists, model, 20)
        assert read.ids == fitted.ids
        np.testing.assert_array_equal(read.scores, fitted.scores)
    with pytest.raises(MergeModelError, match="clicked notes some channel found"):
        fit_merge([MergeSample(held_out[0].lists, frozenset(["elsewhere"]))], ("good",))


def test_load_merge_model_names_a_missing_or_mismatched_file(tmp_path: Path) -> None:
    with pytest.raises(MergeModelError, match="not found: write it with"):
        load_merge_model(tmp_path / "none.json")
    bad = _model({}).to_json()
    bad["channels"] = ["a"]  # sizes for two channels
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(MergeModelError, match="refit it with fit_merge"):
        load_merge_model(tmp_path / "bad.json")


def test_blend_found_reserves_slots_in_order() -> None:
    fused = np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3])
    found = [["t"], ["t"], ["t", "c"], ["f"], ["c"], ["c"]]
    assert blend_found(fused, found, {}, 3).tolist() == [0, 1, 2]
    assert blend_found(fused, found, {"f": 1, "c": 1}, 3).tolist() == [0, 2, 3]
    assert blend_found(fused, found, {"f": 1, "c": 3}, 3).tolist() == [2, 5, 3]


def test_recommend_reports_the_channels_that_found_each_item(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """ItemCF neighbours of the user's clicks reach /recommend with their channels; a fresh
    note gets its reserved slot; the counters per channel count them."""
    publish_trained(tmp_path / "snapshots")
    settings = serving_settings(tmp_path / "snapshots", redis_url)
    service = service_for(settings, redis_url)
    service.watcher.refresh()
    view = service.watcher.current()
    notes, _ = view.retriever.item_vectors()
    clicked, similar, fresh = notes[:2], notes[2:12], notes[12]
    HistoryWriter(redis_client, settings.feast_project).write(["cf-user"], [clicked], [1_000])
    store = NeighbourStore(redis_client, settings.feast_project)
    sims = [1.0 - 0.05 * j for j in range(len(similar))]
    store.write(
        {"itemcf": {clicked[0]: (similar, sims)}},
        fresh=[FreshNote(fresh, 1_000, "", "", 0)],
    )
    client = TestClient(service.app)
    r = client.get("/recommend", params={"user_id": "cf-user", "n": 20})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    by_itemcf = [i for i in items if "itemcf" in i["channels"]]
    assert by_itemcf and all(i["note_id"] in similar for i in by_itemcf)
    assert all(i["channels"][0] == i["channel"] for i in items)
    assert fresh in {i["note_id"] for i in items}  # fresh_share 0.1 of 20: two slots reserved
    metrics = client.get("/metrics").text
    assert 'streamrec_channel_candidates_total{channel="itemcf"}' in metrics
    assert 'streamrec_channel_items_total{channel="fresh"} 1.0' in metrics
    # /notes with a user: which channels propose the note to that user (the demo's fresh probe)
    found = client.get(f"/notes/{fresh}", params={"user_id": "cf-user"}).json()
    assert "fresh" in found["channels"] and found["shown"] is False
    found = client.get(f"/notes/{similar[0]}", params={"user_id": "cf-user"}).json()
    assert "itemcf" in found["channels"] and "fresh" not in found["channels"]
    assert client.get(f"/notes/{fresh}").json()["channels"] == []


def test_recommend_with_a_learnt_merge_orders_candidates_by_its_score(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """With `channels.merge_model` set, the merged candidates carry the model's score (a model
    that only values ItemCF's finds: they score 10, the others 0); a missing file fails at start."""
    publish_trained(tmp_path / "snapshots")
    base = serving_settings(tmp_path / "snapshots", redis_url)
    channels = ("itemcf", "two_tower")
    model = _model(dict.fromkeys(range(RANK_BINS), 10.0), channels)
    path = tmp_path / "merge.json"
    path.write_text(json.dumps(model.to_json()))
    cc = base.serving.channels.model_copy(update={"merge_model": path, "merge_depth": 5})
    settings = base.model_copy(update={"serving": base.serving.model_copy(update={"channels": cc})})
    service = service_for(settings, redis_url)
    service.watcher.refresh()
    notes, _ = service.watcher.current().retriever.item_vectors()
    clicked, similar = notes[:1], notes[1:11]
    HistoryWriter(redis_client, settings.feast_project).write(["lm-user"], [clicked], [1_000])
    NeighbourStore(redis_client, settings.feast_project).write(
        {"itemcf": {clicked[0]: (similar, [1.0 - 0.05 * j for j in range(len(similar))])}}
    )
    r = TestClient(service.app).get("/recommend", params={"user_id": "lm-user", "n": 50})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    by_itemcf = [i for i in items if "itemcf" in i["channels"]]
    assert by_itemcf and all(i["note_id"] in similar for i in by_itemcf)
    assert all(i["retrieval_score"] == pytest.approx(10.0) for i in by_itemcf)
    assert all(i["retrieval_score"] == pytest.approx(0.0) for i in items if i not in by_itemcf)
    missing = cc.model_copy(update={"merge_model": tmp_path / "none.json"})
    with pytest.raises(MergeModelError, match=r"none\.json not found"):
        service_for(
            base.model_copy(
                update={"serving": base.serving.model_copy(update={"channels": missing})}
            ),
            redis_url,
        )


def test_cache_channel_offers_what_the_last_answer_ranked_high_but_did_not_return(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    """With the cache channel on, an answer stores its best fused notes beyond the returned
    ones; the next answer's candidates carry them as found by "cache"; off, nothing is kept."""
    publish_trained(tmp_path / "snapshots")
    base = serving_settings(tmp_path / "snapshots", redis_url)
    channels = base.serving.channels.model_copy(update={"cache": 50, "cache_size": 30})
    settings = base.model_copy(
        update={"serving": base.serving.model_copy(update={"channels": channels})}
    )
    service = service_for(settings, redis_url)
    service.watcher.refresh()
    client = TestClient(service.app)
    store = NeighbourStore(redis_client, settings.feast_project)
    first = client.get("/recommend", params={"user_id": "cache-user", "n": 10}).json()["items"]
    cached, scores = store.cached("cache-user")
    assert len(cached) == 30 and not {i["note_id"] for i in first} & set(cached)
    assert scores == sorted(scores, reverse=True)
    assert scores[0] <= min(i["score"] for i in first) + 1e-9  # ranked just below the answer
    second = client.get("/recommend", params={"user_id": "cache-user", "n": 20}).json()["items"]
    again = [i for i in second if i["note_id"] in cached]
    assert again and all("cache" in i["channels"] for i in again)
    plain = serving_settings(tmp_path / "snapshots", redis_url)
    off = service_for(plain, redis_url)
    off.watcher.refresh()
    TestClient(off.app).get("/recommend", params={"user_id": "cache-off", "n": 10})
    assert NeighbourStore(redis_client, plain.feast_project).cached("cache-off") == ([], [])
