"""The channels' Redis indexes: neighbour lists, authors' newest notes, fresh notes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from features.errors import FeaturesError
from features.neighbours import FreshNote, NeighbourStore


@pytest.fixture
def store(redis_client: redis.Redis) -> Iterator[NeighbourStore]:
    """A store under a fresh prefix, its keys deleted afterwards."""
    project = f"test-nb-{uuid.uuid4().hex[:8]}"
    yield NeighbourStore(redis_client, project)
    keys = list(redis_client.scan_iter(match=f"{project}:*", count=1_000))
    if keys:
        redis_client.delete(*keys)


def test_rows_round_trip_and_an_empty_row_deletes(store: NeighbourStore) -> None:
    store.write({"itemcf": {"a": (["b", "c"], [0.5, 0.25])}, "swing": {"a": (["c"], [1.5])}})
    assert store.read("itemcf", ["a", "zz"]) == [(["b", "c"], [0.5, 0.25]), ([], [])]
    assert store.read("swing", ["a"]) == [(["c"], [1.5])]
    store.write({"itemcf": {"a": ([], [])}}, hwm_ms=5)
    assert store.read("itemcf", ["a"]) == [([], [])]
    assert store.read("swing", ["a"]) == [(["c"], [1.5])]
    assert store.as_of() == 5
    store.write({}, hwm_ms=3)  # the mark never goes back
    assert store.as_of() == 5
    with pytest.raises(FeaturesError, match="unknown neighbour kind"):
        store.read("usercf", ["a"])


def test_authors_keep_their_newest_notes(store: NeighbourStore) -> None:
    store.write({}, authors={"x": {"n1": 10, "n2": 30, "n3": 20}}, per_author=2)
    store.write({}, authors={"x": {"n4": 25}, "y": {"m": 1}}, per_author=2)
    assert store.author_notes(["x", "y", "none"], 5) == [
        [("n2", 30), ("n4", 25)],
        [("m", 1)],
        [],
    ]


def test_fresh_notes_newest_first_until_stale(store: NeighbourStore) -> None:
    store.write({}, fresh=[FreshNote("a", 10, "c1", "x", 0), FreshNote("b", 20, "", "", 3)])
    assert store.fresh(10) == [FreshNote("b", 20, "", "", 3), FreshNote("a", 10, "c1", "x", 0)]
    store.write({}, fresh=[FreshNote("a", 10, "c1", "x", 7)], stale=["b"])
    assert store.fresh(10) == [FreshNote("a", 10, "c1", "x", 7)]
