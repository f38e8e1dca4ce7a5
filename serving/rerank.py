"""Re-ranking: maximal marginal relevance over item embeddings, with window rules.

Reference: J. Carbonell, J. Goldstein, "The Use of MMR, Diversity-Based Reranking for Reordering
Documents and Producing Summaries", SIGIR 1998; the seeds' re-ranking stage (seeds/002 Part 1:
MMR or DPP for diversity, then rules that spread similar notes out).

Greedy: each next slot takes the candidate of highest

    (1 - diversity) x relevance - diversity x max similarity to the notes already placed

where relevance is the fused score min-max scaled to [0, 1] over the pool and similarity the
cosine of the notes' item vectors (the retriever's; a note without one is similar to none).
Window rules: among any `window` consecutive slots at most `max_per_category` notes of one
category and `max_per_author` of one author (empty ids are exempt). When no candidate satisfies
the rules the best by MMR is taken anyway (a short list is never left with holes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.config import RerankConfig


@dataclass(frozen=True)
class Reranked:
    """The re-ranker's answer."""

    order: np.ndarray
    """(n,) indices into the pool, in display order."""
    relaxed: int
    """Slots where no candidate satisfied the window rules (the best by MMR was taken)."""


def _recent_counts(placed: list[int], keys: list[str], window: int) -> dict[str, int]:
    """Per key, how many of the last `window - 1` placed notes carry it."""
    recent = placed[-(window - 1) :] if window > 1 else []
    counts: dict[str, int] = {}
    for j in recent:
        k = keys[j]
        if k:
            counts[k] = counts.get(k, 0) + 1
    return counts


def rerank(
    scores: np.ndarray,
    vectors: np.ndarray,
    categories: list[str],
    authors: list[str],
    n: int,
    config: RerankConfig,
) -> Reranked:
    """Pick and order `n` of the pool by MMR under the window rules.

    Args:
        scores: (m,) fused scores of the pool (higher better).
        vectors: (m, d) item vectors, unit length (zero rows: no vector).
        categories, authors: (m,) ids ("" unknown).
        n: notes to return (at most m).
    """
    m = len(scores)
    n = min(n, m)
    if n == 0:
        return Reranked(np.zeros(0, dtype=np.int64), 0)
    s = np.asarray(scores, dtype=np.float64)
    span = s.max() - s.min()
    rel = (s - s.min()) / span if span > 0 else np.ones(m)
    v = np.asarray(vectors, dtype=np.float32)
    theta = config.diversity
    max_sim = np.full(m, 0.0)  # (m,) highest similarity to a placed note
    free = np.ones(m, dtype=bool)
    placed: list[int] = []
    relaxed = 0
    for _ in range(n):
        mmr = (1.0 - theta) * rel - theta * max_sim  # (m,)
        mmr[~free] = -np.inf
        ok = free.copy()
        for keys, most in ((categories, config.max_per_category), (authors, config.max_per_author)):
            if most <= 0:
                continue
            counts = _recent_counts(placed, keys, config.window)
            blocked = {k for k, c in counts.items() if c >= most}
            if blocked:
                ok &= np.array([keys[j] not in blocked for j in range(m)])
        if ok.any():
            j = int(np.argmax(np.where(ok, mmr, -np.inf)))
        else:
            relaxed += 1
            j = int(np.argmax(mmr))
        placed.append(j)
        free[j] = False
        if theta > 0:
            max_sim = np.maximum(max_sim, v @ v[j])  # (m,)
    return Reranked(np.array(placed, dtype=np.int64), relaxed)


def intra_list_diversity(vectors: np.ndarray) -> float:
    """Mean pairwise 1 - cosine of the list's item vectors (unit rows; NaN under two)."""
    v = np.asarray(vectors, dtype=np.float64)
    k = len(v)
    if k < 2:
        return float("nan")
    sims = v @ v.T  # (k, k)
    off = sims[~np.eye(k, dtype=bool)]
    return float(np.mean(1.0 - off))


def category_coverage(categories: list[str]) -> int:
    """Distinct known categories in the list."""
    return len({c for c in categories if c})


__all__ = ["Reranked", "category_coverage", "intra_list_diversity", "rerank"]
