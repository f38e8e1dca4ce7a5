"""Re-ranking: MMR over item vectors and the window rules."""

from __future__ import annotations

import numpy as np

from serving.config import RerankConfig
from serving.rerank import category_coverage, intra_list_diversity, rerank

NO_RULES = RerankConfig(max_per_category=0, max_per_author=0)


def _vectors(groups: list[int], d: int = 4) -> np.ndarray:
    """Unit vectors: notes of one group point the same way, groups are orthogonal."""
    v = np.zeros((len(groups), d), dtype=np.float32)
    v[np.arange(len(groups)), groups] = 1.0
    return v


def test_zero_diversity_keeps_the_fused_order() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.7])
    got = rerank(
        scores,
        _vectors([0, 0, 0, 0]),
        [""] * 4,
        [""] * 4,
        3,
        NO_RULES.model_copy(update={"diversity": 0.0}),
    )
    assert got.order.tolist() == [1, 3, 2] and got.relaxed == 0


def test_mmr_interleaves_similar_notes_and_raises_diversity() -> None:
    scores = np.array([1.0, 0.95, 0.9, 0.5, 0.45])
    groups = [0, 0, 0, 1, 2]
    v = _vectors(groups)
    plain = np.argsort(-scores)[:3]
    got = rerank(scores, v, [""] * 5, [""] * 5, 3, NO_RULES.model_copy(update={"diversity": 0.5}))
    assert got.order[0] == 0  # the best note still leads
    assert {groups[j] for j in got.order} == {0, 1, 2}
    assert intra_list_diversity(v[got.order]) > intra_list_diversity(v[plain])


def test_window_rules_spread_categories_and_authors() -> None:
    scores = np.linspace(1.0, 0.1, 10)
    cats = ["a"] * 6 + ["b", "b", "c", "c"]
    authors = ["x", "x", "y", "y", "z", "z", "w", "v", "u", "t"]
    config = RerankConfig(diversity=0.0, window=3, max_per_category=1, max_per_author=1)
    got = rerank(scores, _vectors([0] * 10), cats, authors, 6, config)
    placed = got.order.tolist()
    for lo in range(len(placed) - 2):
        window = placed[lo : lo + 3]
        assert len({cats[j] for j in window}) == 3, (placed, lo)
        assert len({authors[j] for j in window}) == 3
    assert got.relaxed == 0
    assert category_coverage([cats[j] for j in placed]) == 3


def test_rules_are_relaxed_rather_than_leaving_holes() -> None:
    config = RerankConfig(diversity=0.0, window=5, max_per_category=1, max_per_author=0)
    got = rerank(np.array([0.3, 0.2, 0.1]), _vectors([0, 1, 2]), ["a"] * 3, [""] * 3, 3, config)
    assert got.order.tolist() == [0, 1, 2] and got.relaxed == 2
    assert rerank(np.zeros(0), np.zeros((0, 4)), [], [], 5, config).order.size == 0
    assert np.isnan(intra_list_diversity(np.ones((1, 4))))
