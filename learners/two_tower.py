"""Two-tower retriever with in-batch softmax, log-Q correction and sampled negatives.

Reference: X. Yi, J. Yang, L. Hong, D. Z. Cheng, L. Heldt, A. Kumthekar, Z. Zhao, L. Wei,
E. Chi, "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations",
RecSys 2019 (in-batch softmax, logit - log p_j with the streaming frequency estimate of its
algorithm 2, normalised embeddings with temperature). Extra negatives drawn in proportion to
clicks^0.75 (word2vec's unigram^0.75) mixed into the softmax as in J. Yang et al., "Mixed
Negative Sampling for Learning Two-tower Neural Networks in Recommendations", WWW 2020, each
corrected by the log of its own sampling probability. Positives are clicked samples only:
shown-but-not-clicked items are ranking negatives, never retrieval negatives. The user tower
averages the note embeddings of the user's recent clicks, as P. Covington et al., "Deep Neural
Networks for YouTube Recommendations", RecSys 2016, average the watch history.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as fn
from torch import nn

from learners.config import RetrieverConfig
from learners.embeddings import EmbeddingStore, IdEmbedding
from learners.inputs import history_rows, stat_tensor
from learners.modules import MLP, HistoryPooling, StatEmbedding


class StreamingFrequency:
    """Streaming estimate of each item's sampling probability (Yi et al. 2019, algorithm 2).

    Hashed arrays A (step the item was last seen) and B (estimated steps between two
    occurrences); p = 1 / B. Hash: crc32 of the id (stable across processes).
    """

    def __init__(self, buckets: int, alpha: float) -> None:
        self.alpha = alpha
        self.step = 0
        self.last = np.zeros(buckets, dtype=np.float64)  # A
        self.gap = np.full(buckets, float(buckets), dtype=np.float64)  # B

    def _hash(self, ids: list[str]) -> np.ndarray:
        n = len(self.last)
        return np.fromiter((zlib.crc32(i.encode()) % n for i in ids), np.int64, len(ids))

    def probability(self, ids: list[str]) -> np.ndarray:
        """Estimated probability that a training example's item is each of `ids`."""
        return 1.0 / np.maximum(self.gap[self._hash(ids)], 1.0)

    def update(self, ids: list[str]) -> None:
        """Record one training batch's positive items (one step per item)."""
        h = self._hash(ids)
        steps = self.step + np.arange(1, len(ids) + 1, dtype=np.float64)
        for j, s in zip(h.tolist(), steps.tolist(), strict=True):  # sequential by definition
            if self.last[j] > 0:
                self.gap[j] = (1 - self.alpha) * self.gap[j] + self.alpha * (s - self.last[j])
            self.last[j] = s
        self.step += len(ids)

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to persist in a snapshot."""
        return {
            "freq.last": self.last.astype(np.float64),
            "freq.gap": self.gap.astype(np.float64),
            "freq.step": np.array([self.step], dtype=np.int64),
        }

    def restore(self, dense: dict[str, np.ndarray]) -> None:
        """Restore `state()` arrays when the bucket count matches."""
        if "freq.gap" in dense and len(dense["freq.gap"]) == len(self.gap):
            self.last = np.array(dense["freq.last"], dtype=np.float64)
            self.gap = np.array(dense["freq.gap"], dtype=np.float64)
            self.step = int(dense["freq.step"][0])


class UserTower(nn.Module):
    """User ID embedding + bucketised user statistics (+ the mean embedding of the user's
    recently clicked notes) -> MLP -> unit vector."""

    def __init__(self, user: IdEmbedding, note: IdEmbedding, config: RetrieverConfig) -> None:
        super().__init__()
        self.user = user
        self.stats = StatEmbedding(config.stat_buckets, config.stat_dim)
        self.history = HistoryPooling(note) if config.history else None
        width = user.dim + self.stats.out_dim
        width += self.history.out_dim if self.history is not None else 0
        self.mlp = MLP(width, (*config.hidden, config.out_dim), last_linear=True)

    def forward(
        self,
        user_rows: torch.Tensor,
        stats: torch.Tensor,
        history: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B,) rows, (B, F) bucket indices, (B, N) history rows and mask -> (B, d) normalised."""
        parts = [self.user(user_rows), self.stats(stats)]  # (B, d_u), (B, F s)
        if self.history is not None:
            if history is None:
                raise ValueError("this user tower pools the history: pass its rows and mask")
            parts.append(self.history(*history))  # (B, d_n)
        return fn.normalize(self.mlp(torch.cat(parts, dim=1)), dim=1)  # (B, d)


class ItemTower(nn.Module):
    """Note, author and category ID embeddings -> MLP -> unit vector."""

    def __init__(
        self, note: IdEmbedding, author: IdEmbedding, category: IdEmbedding, config: RetrieverConfig
    ) -> None:
        super().__init__()
        self.note, self.author, self.category = note, author, category
        self.mlp = MLP(
            note.dim + author.dim + category.dim, (*config.hidden, config.out_dim), last_linear=True
        )

    def forward(
        self, note_rows: torch.Tensor, author_rows: torch.Tensor, category_rows: torch.Tensor
    ) -> torch.Tensor:
        """(N,) rows each -> (N, d) normalised."""
        x = torch.cat(
            [self.note(note_rows), self.author(author_rows), self.category(category_rows)], dim=1
        )  # (N, d_n + d_a + d_c)
        return fn.normalize(self.mlp(x), dim=1)  # (N, d)


@dataclass(frozen=True)
class RetrievalBatch:
    """Tensors of one batch of clicked samples plus the sampled negatives."""

    user_rows: torch.Tensor
    """(B,)"""
    user_stats: torch.Tensor
    """(B, F) bucket indices."""
    history: tuple[torch.Tensor, torch.Tensor] | None
    """(B, N) rows and mask of the users' recent clicked notes (None without history)."""
    item_rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    """Note, author, category rows, (B,) each."""
    item_logq: torch.Tensor
    """(B,) log of the streaming probability of each positive item."""
    same_item: torch.Tensor
    """(B, B) bool: column j is the same note as row i's positive (masked unless i == j)."""
    neg_rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    """Sampled negatives' note, author, category rows, (M,) each."""
    neg_logq: torch.Tensor | None = None
    """(M,) log of each negative's probability under the sampler (times M)."""
    neg_is_pos: torch.Tensor | None = None
    """(B, M) bool: the negative is row i's positive (masked)."""


class TwoTowerModel(nn.Module):
    """User tower and item tower; cosine / temperature scores; corrected sampled softmax."""

    def __init__(self, store: EmbeddingStore, config: RetrieverConfig) -> None:
        super().__init__()
        self.config = config
        self.store = store
        self.embeddings = nn.ModuleDict(
            {t: IdEmbedding(store[t]) for t in ("user", "note", "author", "category")}
        )
        e = self.embeddings
        self.user_tower = UserTower(e["user"], e["note"], config)
        self.item_tower = ItemTower(e["note"], e["author"], e["category"], config)

    def id_embeddings(self) -> list[IdEmbedding]:
        """The sparse ID embedding modules."""
        return list(self.embeddings.values())

    def encode_user(
        self,
        user_rows: torch.Tensor,
        stats: torch.Tensor,
        history: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(B,) user rows, (B, F) stat buckets, history rows and mask -> (B, d) unit vectors."""
        return self.user_tower(user_rows, stats, history)

    def history_tensor(self, history: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per user the recently clicked notes (newest first) -> rows and mask (None if off)."""
        if not self.config.history:
            return None
        return history_rows(self.store["note"].rows, history, self.config.history)

    def encode_item(
        self, note_rows: torch.Tensor, author_rows: torch.Tensor, category_rows: torch.Tensor
    ) -> torch.Tensor:
        """(N,) rows each -> (N, d) unit vectors."""
        return self.item_tower(note_rows, author_rows, category_rows)

    def stats_tensor(self, counts: np.ndarray) -> torch.Tensor:
        """(n, F) raw counts -> bucket indices."""
        return stat_tensor(counts, self.config.stat_buckets)

    def loss(self, b: RetrievalBatch) -> torch.Tensor:
        """Softmax cross-entropy of each user over in-batch + sampled items, log-Q corrected."""
        u = self.encode_user(b.user_rows, b.user_stats, b.history)  # (B, d)
        rows = b.item_rows
        if b.neg_rows is not None:  # one item-tower pass: each ID table is looked up once
            rows = tuple(torch.cat([p, n]) for p, n in zip(b.item_rows, b.neg_rows, strict=True))
        items = self.encode_item(*rows)  # (B + M, d)
        v = items[: len(u)]  # (B, d)
        tau = self.config.temperature
        logits = u @ v.T / tau - b.item_logq.unsqueeze(0)  # (B, B)
        eye = torch.eye(len(u), dtype=torch.bool)
        logits = logits.masked_fill(b.same_item & ~eye, float("-inf"))  # accidental hits
        if b.neg_rows is not None:
            w = items[len(u) :]  # (M, d)
            neg = u @ w.T / tau - b.neg_logq.unsqueeze(0)  # (B, M)
            neg = neg.masked_fill(b.neg_is_pos, float("-inf"))
            logits = torch.cat([logits, neg], dim=1)  # (B, B + M)
        target = torch.arange(len(u))
        return fn.cross_entropy(logits, target)
