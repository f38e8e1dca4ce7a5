"""Small building blocks the models combine: MLP, Experts, Gate, bucket and ID embeddings."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from learners.embeddings import IdEmbedding
from learners.inputs import F


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Run the block with `module` in eval mode, its mode restored after. A module in eval mode
    already (every served model) is left alone: no walk over its submodules per call."""
    if not module.training:
        yield
        return
    module.eval()
    try:
        yield
    finally:
        module.train()


class MLP(nn.Module):
    """Linear + ReLU (+ dropout) layers; the last layer keeps its ReLU unless `last_linear`."""

    def __init__(
        self, in_dim: int, widths: tuple[int, ...], dropout: float = 0.0, last_linear: bool = False
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for i, w in enumerate(widths):
            layers.append(nn.Linear(d, w))
            if not (last_linear and i == len(widths) - 1):
                layers.append(nn.ReLU())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
            d = w
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, out_dim)."""
        return self.net(x)


class Experts(nn.Module):
    """`n` expert MLPs on the same input, stacked."""

    def __init__(self, n: int, in_dim: int, widths: tuple[int, ...], dropout: float = 0.0) -> None:
        super().__init__()
        self.experts = nn.ModuleList(MLP(in_dim, widths, dropout) for _ in range(n))
        self.out_dim = self.experts[0].out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, n, out_dim)."""
        return torch.stack([e(x) for e in self.experts], dim=1)  # (B, n, d)


class Gate(nn.Module):
    """Softmax gate over experts, with dropout on its outputs against polarisation.

    In training each gate output is zeroed with probability `dropout` and the rest are
    renormalised to sum to 1 (Zhao et al., "Recommending What Video to Watch Next", RecSys 2019),
    so no task can rely on a single expert.
    """

    def __init__(self, in_dim: int, n: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, n)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) -> (B, n) mixture weights."""
        g = torch.softmax(self.linear(x), dim=-1)  # (B, n)
        if self.training and self.dropout > 0:
            keep = (torch.rand_like(g) >= self.dropout).to(g.dtype)  # (B, n)
            keep[keep.sum(dim=1) == 0] = 1.0  # never drop every expert
            g = g * keep
            g = g / g.sum(dim=1, keepdim=True)  # (B, n)
        return g


def gate_entropy(g: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of gate weights (B, n); log(n) = uniform, 0 = fully polarised."""
    return -(g * torch.log(g.clamp_min(1e-12))).sum(dim=1).mean()


class StatEmbedding(nn.Module):
    """Log-bucketised window counts: one small embedding per (statistic, bucket), concatenated."""

    def __init__(self, buckets: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(F * buckets, dim)
        nn.init.normal_(self.embedding.weight, std=0.05)
        self.out_dim = F * dim

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """(B, F) bucket indices (`inputs.stat_tensor`) -> (B, F * dim)."""
        return self.embedding(index).flatten(1)  # (B, F * dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, N, d) values, (B, N) bool mask -> (B, d) mean over the unmasked (0 where none)."""
    w = mask.to(values.dtype).unsqueeze(-1)  # (B, N, 1)
    return (values * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)  # (B, d)


class HistoryPooling(nn.Module):
    """Mean of the ID embeddings of a user's history (YouTube DNN's averaged watch history)."""

    def __init__(self, items: IdEmbedding) -> None:
        super().__init__()
        self.items = items
        self.out_dim = items.dim

    def forward(self, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, N) history rows, (B, N) bool mask -> (B, d) (zeros for an empty history)."""
        b, n = rows.shape
        h = self.items(rows.reshape(-1), droppable=False).reshape(b, n, -1)  # (B, N, d)
        return masked_mean(h, mask)  # (B, d)


class TargetAttention(nn.Module):
    """DIN's local activation unit: the history weighted by its relevance to the target item.

    Reference: G. Zhou et al., "Deep Interest Network for Click-Through Rate Prediction",
    KDD 2018. Each history item k and the target t go through an MLP on [k, t, k * t, k - t];
    its outputs, softmax-normalised over the history (masked), weight the items' sum h. Returns
    [h, h * t]: the product lets the layers above compare interest and target directly (an MLP
    learns a dot product from a concatenation only slowly).
    """

    def __init__(self, items: IdEmbedding, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.items = items
        self.unit = MLP(4 * items.dim, (*hidden, 1), last_linear=True)
        self.out_dim = 2 * items.dim

    def forward(self, target: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, d) target vectors, (B, N) history rows and mask -> (B, 2 d) (zeros if none)."""
        b, n = rows.shape
        k = self.items(rows.reshape(-1), droppable=False).reshape(b, n, -1)  # (B, N, d)
        t = target.unsqueeze(1).expand_as(k)  # (B, N, d)
        score = self.unit(torch.cat([k, t, k * t, k - t], dim=-1)).squeeze(-1)  # (B, N)
        score = score.masked_fill(~mask, float("-inf"))
        weight = torch.softmax(score, dim=1).nan_to_num(0.0)  # (B, N); all masked -> 0
        h = (weight.unsqueeze(-1) * k).sum(dim=1)  # (B, d)
        return torch.cat([h, h * target], dim=1)  # (B, 2 d)


__all__ = [
    "MLP",
    "Experts",
    "Gate",
    "HistoryPooling",
    "IdEmbedding",
    "StatEmbedding",
    "TargetAttention",
    "gate_entropy",
    "masked_mean",
]
