"""Multi-task rankers: MMoE, PLE and the shared-bottom baseline, with the same interface.

Reference: J. Ma, Z. Zhao, X. Yi, J. Chen, L. Hong, E. H. Chi, "Modeling Task Relationships in
Multi-task Learning with Multi-gate Mixture-of-Experts", KDD 2018. PLE / CGC: H. Tang, J. Liu,
M. Zhao, X. Gong, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL)
Model for Personalized Recommendations", RecSys 2020. Gate dropout against
polarisation: Z. Zhao et al., "Recommending What Video to Watch Next", RecSys 2019. ESMM
(optional): X. Ma et al., "Entire Space Multi-Task Model", SIGIR 2018. Watch time as weighted
logistic regression: P. Covington et al., "Deep Neural Networks for YouTube Recommendations",
RecSys 2016 (here: cross-entropy against t / (1 + t), predict exp(z)). Attention over the
user's clicked notes: G. Zhou et al., "Deep Interest Network for Click-Through Rate
Prediction", KDD 2018.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as fn
from torch import nn

from learners.config import ID_TABLES, RankerConfig
from learners.embeddings import EmbeddingStore, IdEmbedding
from learners.inputs import (
    Columns,
    R,
    duration_tensor,
    history_rows,
    position_tensor,
    rate_tensor,
    stat_tensor,
)
from learners.modules import MLP, Experts, Gate, StatEmbedding, TargetAttention, gate_entropy

WATCH = "watch"
"""The watch-time task (tower output z; p = sigmoid(z) against t / (1 + t))."""


@dataclass(frozen=True)
class TaskOutput:
    """What a multi-task core returns."""

    logits: dict[str, torch.Tensor]
    """Task -> (B,) logits."""
    gates: list[torch.Tensor]
    """Per task (B, experts) gate weights; empty for shared-bottom."""

    def gate_entropy(self) -> float:
        """Mean gate entropy over tasks (nats), NaN without gates."""
        if not self.gates:
            return float("nan")
        with torch.no_grad():
            return float(torch.stack([gate_entropy(g) for g in self.gates]).mean())


def mix(g: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """(B, n) gate weights, (B, n, d) expert outputs -> (B, d) weighted sum."""
    return (g.unsqueeze(-1) * e).sum(dim=1)  # (B, d)


class MMoECore(nn.Module):
    """Experts shared by all tasks, one softmax gate and one tower per task."""

    def __init__(
        self,
        in_dim: int,
        tasks: tuple[str, ...],
        experts: int,
        expert_hidden: tuple[int, ...],
        tower_hidden: tuple[int, ...],
        gate_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.tasks = tasks
        self.experts = Experts(experts, in_dim, expert_hidden, dropout)
        self.gates = nn.ModuleDict({t: Gate(in_dim, experts, gate_dropout) for t in tasks})
        self.towers = nn.ModuleDict(
            {
                t: MLP(self.experts.out_dim, (*tower_hidden, 1), dropout, last_linear=True)
                for t in tasks
            }
        )

    def forward(self, x: torch.Tensor) -> TaskOutput:
        """(B, in_dim) -> per-task logits (B,) and gate weights (B, experts)."""
        e = self.experts(x)  # (B, n, d)
        logits, gates = {}, []
        for t in self.tasks:
            g = self.gates[t](x)  # (B, n)
            logits[t] = self.towers[t](mix(g, e)).squeeze(-1)  # (B,)
            gates.append(g)
        return TaskOutput(logits, gates)


class SharedBottomCore(nn.Module):
    """One shared bottom MLP, one tower per task (the baseline)."""

    def __init__(
        self,
        in_dim: int,
        tasks: tuple[str, ...],
        bottom: tuple[int, ...],
        tower_hidden: tuple[int, ...],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.tasks = tasks
        self.bottom = MLP(in_dim, bottom, dropout)
        self.towers = nn.ModuleDict(
            {
                t: MLP(self.bottom.out_dim, (*tower_hidden, 1), dropout, last_linear=True)
                for t in tasks
            }
        )

    def forward(self, x: torch.Tensor) -> TaskOutput:
        """(B, in_dim) -> per-task logits (B,)."""
        h = self.bottom(x)  # (B, d)
        return TaskOutput({t: self.towers[t](h).squeeze(-1) for t in self.tasks}, [])


class CGCLayer(nn.Module):
    """One PLE extraction layer (CGC): task-specific and shared experts, a gate per task.

    Task t's gate mixes only t's `task_experts` and the `shared_experts`; unless `last`, a
    shared gate over all experts also gives the shared input of the next layer.
    """

    def __init__(
        self,
        in_dim: int,
        tasks: tuple[str, ...],
        task_experts: int,
        shared_experts: int,
        expert_hidden: tuple[int, ...],
        gate_dropout: float = 0.0,
        dropout: float = 0.0,
        last: bool = True,
    ) -> None:
        super().__init__()
        self.tasks = tasks
        self.own = nn.ModuleDict(
            {t: Experts(task_experts, in_dim, expert_hidden, dropout) for t in tasks}
        )
        self.shared = Experts(shared_experts, in_dim, expert_hidden, dropout)
        self.gates = nn.ModuleDict(
            {t: Gate(in_dim, task_experts + shared_experts, gate_dropout) for t in tasks}
        )
        n_all = len(tasks) * task_experts + shared_experts
        self.shared_gate = None if last else Gate(in_dim, n_all, gate_dropout)
        self.out_dim = self.shared.out_dim

    def forward(
        self, xs: dict[str, torch.Tensor], x_shared: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, dict[str, torch.Tensor]]:
        """Per-task and shared inputs (B, in_dim) -> per-task, shared (B, d) and gates.

        The shared output is None in the last layer; task gates are (B, task + shared).
        """
        s = self.shared(x_shared)  # (B, m_s, d)
        own = {t: self.own[t](xs[t]) for t in self.tasks}  # each (B, m_t, d)
        outs, gates = {}, {}
        for t in self.tasks:
            g = self.gates[t](xs[t])  # (B, m_t + m_s)
            outs[t] = mix(g, torch.cat([own[t], s], dim=1))  # (B, d)
            gates[t] = g
        shared = None
        if self.shared_gate is not None:
            g = self.shared_gate(x_shared)  # (B, T m_t + m_s)
            shared = mix(g, torch.cat([*own.values(), s], dim=1))  # (B, d)
        return outs, shared, gates


class PLECore(nn.Module):
    """`levels` stacked CGC layers (progressive layered extraction), one tower per task."""

    def __init__(
        self,
        in_dim: int,
        tasks: tuple[str, ...],
        task_experts: int,
        shared_experts: int,
        levels: int,
        expert_hidden: tuple[int, ...],
        tower_hidden: tuple[int, ...],
        gate_dropout: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.tasks = tasks
        layers, d = [], in_dim
        for i in range(levels):
            layer = CGCLayer(
                d,
                tasks,
                task_experts,
                shared_experts,
                expert_hidden,
                gate_dropout,
                dropout,
                last=i == levels - 1,
            )
            layers.append(layer)
            d = layer.out_dim
        self.layers = nn.ModuleList(layers)
        self.towers = nn.ModuleDict(
            {t: MLP(d, (*tower_hidden, 1), dropout, last_linear=True) for t in tasks}
        )

    def forward(self, x: torch.Tensor) -> TaskOutput:
        """(B, in_dim) -> per-task logits (B,) and last-layer gates (B, task + shared)."""
        xs, shared = dict.fromkeys(self.tasks, x), x  # each (B, in_dim)
        gates: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            xs, shared, gates = layer(xs, shared)  # each (B, d)
        logits = {t: self.towers[t](xs[t]).squeeze(-1) for t in self.tasks}  # each (B,)
        return TaskOutput(logits, [gates[t] for t in self.tasks])


def make_core(config: RankerConfig, in_dim: int, tasks: tuple[str, ...]) -> nn.Module:
    """The core of `config.kind`, with the experts, towers and dropouts of `config`.

    `MMoECore` ("mmoe"), `PLECore` ("ple") or `SharedBottomCore` ("shared_bottom"), of
    similar capacity: the shared bottom is as wide as all experts together, and each
    PLE level's experts are scaled to be together as wide as the MMoE experts (every width of
    `expert_hidden` times `experts` / (`shared_experts` + tasks x `task_experts`), rounded).
    """
    c = config
    if c.kind == "mmoe":
        return MMoECore(
            in_dim, tasks, c.experts, c.expert_hidden, c.tower_hidden, c.gate_dropout, c.dropout
        )
    if c.kind == "ple":
        scale = c.experts / (c.shared_experts + len(tasks) * c.task_experts)
        hidden = tuple(max(1, round(w * scale)) for w in c.expert_hidden)
        return PLECore(
            in_dim,
            tasks,
            c.task_experts,
            c.shared_experts,
            c.levels,
            hidden,
            c.tower_hidden,
            c.gate_dropout,
            c.dropout,
        )
    bottom = (*c.expert_hidden[:-1], c.expert_hidden[-1] * c.experts)
    return SharedBottomCore(in_dim, tasks, bottom, c.tower_hidden, c.dropout)


class BaseLogits(nn.Module):
    """A linear map of the window rates to some tasks' logits: a logistic regression per task.

    Weights are buffers, not parameters: no optimiser moves them, `fit` sets them, and they
    travel in the snapshot with the dense state. Zero (adds nothing) until fitted.
    """

    def __init__(self, in_dim: int, tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.tasks = tasks
        self.register_buffer("weight", torch.zeros(len(tasks), in_dim))
        self.register_buffer("bias", torch.zeros(len(tasks)))

    def forward(self, rates: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, in_dim) rates -> task -> (B,) base logits."""
        z = rates @ self.weight.T + self.bias  # (B, T)
        return {t: z[:, i] for i, t in enumerate(self.tasks)}

    def fit(
        self,
        rates: torch.Tensor,
        loss: Callable[[str, torch.Tensor], torch.Tensor],
        l2: float = 1e-4,
        steps: int = 100,
    ) -> None:
        """Minimise the sum over tasks of `loss(task, logits)` + `l2` |weight|^2 (L-BFGS)."""
        w = torch.zeros_like(self.weight, requires_grad=True)
        b = torch.zeros_like(self.bias, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            z = rates @ w.T + b  # (B, T)
            total = sum(loss(t, z[:, i]) for i, t in enumerate(self.tasks)) + l2 * (w * w).sum()
            total.backward()
            return total

        opt.step(closure)
        with torch.no_grad():
            self.weight.copy_(w)
            self.bias.copy_(b)


@dataclass(frozen=True)
class RankerInputs:
    """Tensors of one batch."""

    ids: dict[str, torch.Tensor]
    """Table -> (B,) int64 rows."""
    user_stats: torch.Tensor
    """(B, F) bucket indices."""
    note_stats: torch.Tensor
    """(B, F) bucket indices."""
    position: torch.Tensor
    """(B,) position buckets."""
    rates: torch.Tensor
    """(B, 2 R) user then note window rates (`rate_tensor`)."""
    duration: torch.Tensor | None = None
    """(B,) duration buckets (`duration_tensor`), None without a duration input."""
    history: tuple[torch.Tensor, torch.Tensor] | None = None
    """(B, N) history note rows and (B, N) mask (`history_rows`), None without history."""


class RankerFeatures(nn.Module):
    """ID embeddings (user, note, author, category) + bucketised stats + window rates +
    position (+ duration bucket + attention over the user's history), concatenated."""

    def __init__(self, store: EmbeddingStore, config: RankerConfig) -> None:
        super().__init__()
        self.ids = nn.ModuleDict({t: IdEmbedding(store[t]) for t in ID_TABLES})
        self.user_stats = StatEmbedding(config.stat_buckets, config.stat_dim)
        self.note_stats = StatEmbedding(config.stat_buckets, config.stat_dim)
        self.position = nn.Embedding(config.positions + 1, config.position_dim)
        self.duration = (
            nn.Embedding(config.duration_buckets, config.duration_dim)
            if config.duration_buckets
            else None
        )
        self.attention = (
            TargetAttention(self.ids["note"], config.attention_hidden) if config.history else None
        )
        self.out_dim = (
            sum(e.dim for e in self.ids.values())
            + self.user_stats.out_dim
            + self.note_stats.out_dim
            + config.position_dim
            + 2 * R
            + (config.duration_dim if self.duration is not None else 0)
            + (self.attention.out_dim if self.attention is not None else 0)
        )

    def forward(self, x: RankerInputs) -> torch.Tensor:
        """-> (B, out_dim)."""
        ids = {t: self.ids[t](x.ids[t]) for t in ID_TABLES}  # each (B, d_t)
        parts = [*ids.values()]
        parts += [
            self.user_stats(x.user_stats),  # (B, F * s)
            self.note_stats(x.note_stats),  # (B, F * s)
            self.position(x.position),  # (B, p)
            x.rates,  # (B, 2 R)
        ]
        if self.duration is not None:
            parts.append(self.duration(x.duration))  # (B, u)
        if self.attention is not None:
            rows, mask = x.history
            parts.append(self.attention(ids["note"], rows, mask))  # (B, 2 d_note)
        return torch.cat(parts, dim=1)  # (B, out_dim)


class RankingModel(nn.Module):
    """The ranker: `RankerFeatures` -> MMoE, PLE or shared-bottom core -> task logits."""

    def __init__(self, store: EmbeddingStore, config: RankerConfig) -> None:
        super().__init__()
        self.config = config
        self.store = store
        self.features = RankerFeatures(store, config)
        self.tasks = (*config.tasks, WATCH)
        self.core = make_core(config, self.features.out_dim, self.tasks)
        self.base = BaseLogits(2 * R, config.base_tasks) if config.base_tasks else None

    def inputs(self, cols: Columns, observe: bool) -> RankerInputs:
        """Tensors of `cols`; with `observe` the IDs are recorded (counted, admitted)."""
        id_cols = {
            "user": cols.user_id,
            "note": cols.note_id,
            "author": cols.author_id,
            "category": cols.category,
        }
        rows = {
            t: torch.from_numpy(
                self.store[t].observe(v, cols.ts) if observe else self.store[t].rows(v)
            )
            for t, v in id_cols.items()
        }
        c = self.config
        return RankerInputs(
            rows,
            stat_tensor(cols.user_stats, c.stat_buckets),
            stat_tensor(cols.note_stats, c.stat_buckets),
            position_tensor(cols.position, c.positions),
            torch.cat(
                [
                    rate_tensor(cols.user_stats, c.rate_prior_strength, c.priors),
                    rate_tensor(cols.note_stats, c.rate_prior_strength, c.priors),
                ],
                dim=1,
            ),
            duration_tensor(cols.item_duration_ms, c.duration_buckets)
            if c.duration_buckets
            else None,
            history_rows(self.store["note"].rows, cols.history, c.history) if c.history else None,
        )

    def forward(self, x: RankerInputs) -> TaskOutput:
        """Task logits and gates of a batch; in eval mode the base logits are added to their
        tasks' (`RankerConfig.base_tasks`): full training (train mode) trains the core alone."""
        out = self.core(self.features(x))
        if self.base is None or self.training:
            return out
        base = self.base(x.rates)
        return TaskOutput(
            {t: z + base[t] if t in base else z for t, z in out.logits.items()}, out.gates
        )

    def fit_base(self, cols: Columns) -> None:
        """Fit the base logits (`RankerConfig.base_tasks`) on `cols` with the tasks' losses."""
        if self.base is None:
            return
        rates = self.inputs(cols, observe=False).rates
        weight = self.importance(cols)
        self.base.fit(
            rates,
            lambda t, z: fn.binary_cross_entropy_with_logits(
                z,
                torch.from_numpy(cols.labels[t]),
                weight=None if t in self.config.calibrated else weight,
            ),
        )

    @staticmethod
    def importance(cols: Columns) -> torch.Tensor:
        """(B,) importance weights 1 / keep_rate, scaled to mean 1."""
        inverse = 1.0 / torch.from_numpy(cols.keep_rate).clamp_min(1e-6)  # (B,)
        return inverse / inverse.mean()

    def id_embeddings(self) -> list[IdEmbedding]:
        """The sparse ID embedding modules."""
        return list(self.features.ids.values())

    def probabilities(self, out: TaskOutput) -> dict[str, torch.Tensor]:
        """Uncalibrated task probabilities (B,); with ESMM non-click tasks are pCTCVR."""
        p = {t: torch.sigmoid(z) for t, z in out.logits.items()}
        if self.config.esmm:
            for t in self.config.tasks:
                if t != "click":
                    p[t] = p["click"] * p[t]
        return p

    def loss(self, out: TaskOutput, cols: Columns) -> torch.Tensor:
        """Sum of the task losses of a batch (see `RankerConfig.calibrated`)."""
        inverse = self.importance(cols)  # (B,)
        probs = self.probabilities(out) if self.config.esmm else None
        total = torch.zeros(())
        for t in self.config.tasks:
            y = torch.from_numpy(cols.labels[t])  # (B,)
            w = None if t in self.config.calibrated else inverse
            if probs is not None and t != "click":
                total = total + fn.binary_cross_entropy(probs[t].clamp(1e-7, 1 - 1e-7), y, weight=w)
            else:
                total = total + fn.binary_cross_entropy_with_logits(out.logits[t], y, weight=w)
        t_units = torch.from_numpy(cols.watch_ms) / self.config.watch_unit_ms  # (B,)
        y_watch = t_units / (1.0 + t_units)  # (B,)
        return total + fn.binary_cross_entropy_with_logits(
            out.logits[WATCH], y_watch, weight=inverse
        )
