"""Small building blocks the models combine: MLP, Experts, Gate, bucket and ID embeddings."""

from __future__ import annotations

import torch
from torch import nn

from learners.embeddings import IdEmbedding
from learners.inputs import F


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


__all__ = ["MLP", "Experts", "Gate", "IdEmbedding", "StatEmbedding", "gate_entropy"]
