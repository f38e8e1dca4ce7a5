"""The faiss note index: exact search, deltas without a rebuild, recall of the approximate kinds."""

from __future__ import annotations

import numpy as np
import pytest

from serving.errors import RetrievalIndexError, ServingError
from serving.index import NoteIndex


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _clustered(n: int, d: int, seed: int, clusters: int = 50) -> np.ndarray:
    """Unit vectors around `clusters` centres (as trained item vectors are)."""
    rng = np.random.default_rng(seed)
    centres = _unit(clusters, d, seed + 1)
    v = centres[rng.integers(0, clusters, n)] + 0.35 * rng.normal(size=(n, d)) / np.sqrt(d)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def _exact(vectors: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    return np.argsort(-(vectors @ q), kind="stable")[:k].tolist()


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_delta_adds_replaces_and_removes_without_rebuild_or_touching_the_live_copy(
    kind: str,
) -> None:
    vectors = _clustered(3_000, 16, 0)
    ids = [f"n{i}" for i in range(len(vectors))]
    index = NoteIndex.build(ids, vectors, kind, nprobe=10_000)
    q = _unit(1, 16, 1)[0]
    got, scores = index.search(q, 50)
    assert got == [ids[j] for j in _exact(vectors, q, 50)]
    assert np.all(np.diff(scores) <= 1e-6)

    best, second = got[0], got[1]
    updated = index.updated([best, "fresh"], np.stack([-q, q]), removed=[second, "unknown"])
    assert updated.build_id == index.build_id  # a delta, not a rebuild
    assert len(updated) == 3_000 and len(index) == 3_000  # -second, +fresh
    top = updated.search(q, 100)[0]
    assert top[0] == "fresh" and best not in top and second not in top
    assert "fresh" in updated and second not in updated and best in updated
    np.testing.assert_array_equal(dict(updated.items())[best], -q)
    # the live copy is unchanged
    assert index.search(q, 2)[0] == [best, second] and "fresh" not in index


def test_hnsw_cannot_remove_so_a_delta_rebuilds_it() -> None:
    vectors = _clustered(2_000, 16, 2)
    ids = [str(i) for i in range(len(vectors))]
    index = NoteIndex.build(ids, vectors, "hnsw")
    q = vectors[7]
    moved = index.updated(["0"], q[None, :], removed=["7"])
    assert moved.build_id != index.build_id
    assert moved.search(q, 1)[0] == ["0"] and "7" not in moved and len(moved) == 1_999


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_recall_at_100_against_exact(kind: str) -> None:
    vectors = _clustered(20_000, 32, 3)
    ids = [str(i) for i in range(len(vectors))]
    index = NoteIndex.build(ids, vectors, kind, nprobe=32, ef_search=128)
    queries = _clustered(30, 32, 3)  # same centres, new points
    recall = np.mean(
        [
            len(set(index.search(q, 100)[0]) & {ids[j] for j in _exact(vectors, q, 100)}) / 100
            for q in queries
        ]
    )
    assert recall >= 0.95, recall


def test_empty_ivf_index_trains_on_its_first_delta() -> None:
    empty = NoteIndex.build([], np.zeros((0, 8), np.float32), "ivf")
    assert len(empty) == 0 and empty.search(np.ones(8), 5) == ([], pytest.approx([]))
    vectors = _unit(100, 8, 4)
    filled = empty.updated([f"n{i}" for i in range(100)], vectors)
    assert len(filled) == 100 and filled.search(vectors[5], 1)[0] == ["n5"]


def test_bad_kind_and_dimension_are_explained() -> None:
    with pytest.raises(ServingError, match="flat, ivf, hnsw"):
        NoteIndex(8, "lsh")
    index = NoteIndex.build(["a"], _unit(1, 8, 5))
    with pytest.raises(RetrievalIndexError, match="full snapshot"):
        index.updated(["b"], _unit(1, 4, 6))
