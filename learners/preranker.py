"""Pre-ranker: the seeds' three-tower model, scoring the merged candidates down to the ranker's.

Reference: the seeds' "粗排三塔模型" (seeds/000, after S. Wang's lectures on Xiaohongshu's
recommender): a user tower run once per request, an item tower whose outputs are cached (here per
snapshot: `PreRankerModelState.item_vectors`), a small cross tower on the statistics that move
every minute (the note's window counts and rates, user x note rate products) run for every
candidate, and the upper layers over the three outputs, trained end to end on the ranker's tasks
- between late fusion (two towers, dot product) and early fusion (the ranker). Cost and
consistency of a pre-ranker: Z. Wang, L. Zhao, B. Jiang, G. Zhou, X. Zhu, K. Gai, "COLD: Towards
the Next Generation of Pre-Ranking System", DLP-KDD 2020. Optional distillation from the ranker's
predictions on the same impressions (`PreRankerConfig.distill`): G. Hinton, O. Vinyals, J. Dean,
"Distilling the Knowledge in a Neural Network", 2015, as in J. Tang, K. Wang, "Ranking
Distillation", KDD 2018.

Training code lives in `learners.training.PreRankerState` (this module is what serving loads).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as fn
from torch import nn

from features.schema import FeatureConfig
from learners.calibration import calibrate, fit_offset
from learners.config import ID_TABLES, RANKER_TASKS
from learners.embeddings import EmbeddingStore, IdEmbedding
from learners.errors import ModelConfigError
from learners.inference import Ranker, _Scorer
from learners.inputs import Columns, R, duration_tensor, rate_tensor, stat_tensor
from learners.models import CalibratedMeta, _ModelState
from learners.modules import MLP, StatEmbedding, evaluating

WATCH = "watch"
"""The watch-time task, as the ranker's (logit z, sigmoid(z) against t / (1 + t))."""


@dataclass(frozen=True)
class PreRankerConfig:
    """Architecture of the three-tower pre-ranker."""

    tasks: tuple[str, ...] = RANKER_TASKS
    """Binary tasks (the ranker's); watch time is always added as task "watch"."""
    id_dims: dict[str, int] = field(
        default_factory=lambda: {"user": 16, "note": 16, "author": 8, "category": 8}
    )
    """Embedding dimension per ID table."""
    stat_buckets: int = 16
    """Log2 buckets per window count (as `RankerConfig.stat_buckets`)."""
    stat_dim: int = 2
    """Embedding dimension per (statistic, bucket)."""
    duration_buckets: int = 12
    """Log2 buckets of the note's duration known at impression (item tower input; 0: none)."""
    duration_dim: int = 4
    """Duration bucket embedding dimension."""
    user_hidden: tuple[int, ...] = (64, 32)
    """Widths of the user tower (the last is its output)."""
    item_hidden: tuple[int, ...] = (64, 32)
    """Widths of the item tower (the last is its output, cached per snapshot)."""
    cross_hidden: tuple[int, ...] = (32, 16)
    """Widths of the cross tower on the statistics (run per candidate: keep it small)."""
    head_hidden: tuple[int, ...] = (32,)
    """Hidden widths of the upper layers shared by the tasks (one linear output per task)."""
    rate_prior_strength: float = 2.0
    """Pseudo-counts smoothing the window rates (as `RankerConfig.rate_prior_strength`)."""
    priors: FeatureConfig = field(default_factory=FeatureConfig)
    """The feature store's priors the rates are smoothed towards (as `RankerConfig.priors`)."""
    watch_unit_ms: float = 60_000.0
    """Watch time t is in this unit for y = t / (1 + t)."""
    calibrated: tuple[str, ...] = ("click",)
    """Tasks trained on the down-sampled data as it comes and calibrated; the others are
    importance weighted (as the ranker's)."""
    distill: float = 0.0
    """Weight of the distillation loss (cross-entropy against the ranker's probabilities on
    the same samples) beside the label loss; 0 (labels only) by default: both keep over 98 % of
    the ranker's top 50 and neither is ahead on both data sets, and labels alone spare a ranker
    forward per training batch (bench.prerank, docs/learning.md "Pre-ranker")."""

    LEGACY: ClassVar[dict[str, object]] = {}
    """Values of fields a snapshot written before they existed implies (`config_from_dict`)."""

    def __post_init__(self) -> None:
        missing = [t for t in ID_TABLES if t not in self.id_dims]
        if missing:
            raise ModelConfigError(f"pre-ranker id_dims lacks {missing}; give a dimension each")
        if self.distill < 0:
            raise ModelConfigError(f"pre-ranker distill must be >= 0, not {self.distill}")


@dataclass(frozen=True)
class PreRankerInputs:
    """Tensors of one batch, grouped by the tower that reads them."""

    user_rows: torch.Tensor
    """(B,) user table rows."""
    user_stats: torch.Tensor
    """(B, F) bucket indices."""
    user_rates: torch.Tensor
    """(B, R) smoothed window rates (`rate_tensor`)."""
    item_rows: dict[str, torch.Tensor]
    """"note", "author", "category" -> (B,) table rows."""
    duration: torch.Tensor | None
    """(B,) duration buckets, None without a duration input."""
    note_stats: torch.Tensor
    """(B, F) bucket indices."""
    note_rates: torch.Tensor
    """(B, R) smoothed window rates."""


class UserTower(nn.Module):
    """User ID embedding + bucketised user counts + user rates -> MLP (once per request)."""

    def __init__(self, user: IdEmbedding, config: PreRankerConfig) -> None:
        super().__init__()
        self.user = user
        self.stats = StatEmbedding(config.stat_buckets, config.stat_dim)
        self.mlp = MLP(user.dim + self.stats.out_dim + R, config.user_hidden)
        self.out_dim = self.mlp.out_dim

    def forward(self, rows: torch.Tensor, stats: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
        """(B,) rows, (B, F) buckets, (B, R) rates -> (B, d_u)."""
        x = torch.cat([self.user(rows), self.stats(stats), rates], dim=1)  # (B, d + F s + R)
        return self.mlp(x)  # (B, d_u)


class ItemTower(nn.Module):
    """Note, author, category ID embeddings + duration bucket -> MLP (cached per snapshot)."""

    def __init__(self, ids: nn.ModuleDict, config: PreRankerConfig) -> None:
        super().__init__()
        self.ids = ids
        self.duration = (
            nn.Embedding(config.duration_buckets, config.duration_dim)
            if config.duration_buckets
            else None
        )
        width = sum(ids[t].dim for t in ("note", "author", "category"))
        width += config.duration_dim if self.duration is not None else 0
        self.mlp = MLP(width, config.item_hidden)
        self.out_dim = self.mlp.out_dim

    def forward(self, rows: dict[str, torch.Tensor], duration: torch.Tensor | None) -> torch.Tensor:
        """Note, author, category (N,) rows and (N,) duration buckets -> (N, d_i)."""
        parts = [self.ids[t](rows[t]) for t in ("note", "author", "category")]  # each (N, d_t)
        if self.duration is not None:
            parts.append(self.duration(duration))  # (N, u)
        return self.mlp(torch.cat(parts, dim=1))  # (N, d_i)


class CrossTower(nn.Module):
    """The statistics that move every minute, per (user, note) pair: the note's bucketised
    counts and rates and the products of the user's and the note's rates -> small MLP."""

    def __init__(self, config: PreRankerConfig) -> None:
        super().__init__()
        self.stats = StatEmbedding(config.stat_buckets, config.stat_dim)
        self.mlp = MLP(self.stats.out_dim + 2 * R, config.cross_hidden)
        self.out_dim = self.mlp.out_dim

    def forward(
        self, note_stats: torch.Tensor, note_rates: torch.Tensor, user_rates: torch.Tensor
    ) -> torch.Tensor:
        """(B, F) note buckets, (B, R) note rates, (B, R) user rates -> (B, d_c)."""
        x = torch.cat(
            [self.stats(note_stats), note_rates, note_rates * user_rates], dim=1
        )  # (B, F s + 2 R)
        return self.mlp(x)  # (B, d_c)


class ThreeTowerHead(nn.Module):
    """Upper layers over the concatenated tower outputs -> one logit per task."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.tasks = tasks
        self.mlp = MLP(in_dim, hidden)
        self.out = nn.Linear(self.mlp.out_dim, len(tasks))

    def forward(self, u: torch.Tensor, i: torch.Tensor, c: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, d_u), (B, d_i), (B, d_c) -> task -> (B,) logits."""
        z = self.out(self.mlp(torch.cat([u, i, c], dim=1)))  # (B, T)
        return {t: z[:, k] for k, t in enumerate(self.tasks)}  # each (B,)


class PreRankingModel(nn.Module):
    """User, item and cross towers and the upper layers (the seeds' three-tower pre-ranker)."""

    def __init__(self, store: EmbeddingStore, config: PreRankerConfig) -> None:
        super().__init__()
        self.config = config
        self.store = store
        self.ids = nn.ModuleDict({t: IdEmbedding(store[t]) for t in ID_TABLES})
        self.user_tower = UserTower(self.ids["user"], config)
        self.item_tower = ItemTower(self.ids, config)
        self.cross_tower = CrossTower(config)
        self.tasks = (*config.tasks, WATCH)
        width = self.user_tower.out_dim + self.item_tower.out_dim + self.cross_tower.out_dim
        self.head = ThreeTowerHead(width, config.head_hidden, self.tasks)

    def id_embeddings(self) -> list[IdEmbedding]:
        """The sparse ID embedding modules."""
        return list(self.ids.values())

    def inputs(self, cols: Columns, observe: bool) -> PreRankerInputs:
        """Tensors of `cols`; with `observe` the IDs are recorded (counted, admitted)."""
        st = self.store

        def rows(table: str, ids: list[str]) -> torch.Tensor:
            return torch.from_numpy(
                st[table].observe(ids, cols.ts) if observe else st[table].rows(ids)
            )

        c = self.config
        return PreRankerInputs(
            user_rows=rows("user", cols.user_id),
            user_stats=stat_tensor(cols.user_stats, c.stat_buckets),
            user_rates=rate_tensor(cols.user_stats, c.rate_prior_strength, c.priors),
            item_rows={
                "note": rows("note", cols.note_id),
                "author": rows("author", cols.author_id),
                "category": rows("category", cols.category),
            },
            duration=duration_tensor(cols.item_duration_ms, c.duration_buckets)
            if c.duration_buckets
            else None,
            note_stats=stat_tensor(cols.note_stats, c.stat_buckets),
            note_rates=rate_tensor(cols.note_stats, c.rate_prior_strength, c.priors),
        )

    def forward(self, x: PreRankerInputs) -> dict[str, torch.Tensor]:
        """Task -> (B,) logits of a training batch (every tower on every row)."""
        u = self.user_tower(x.user_rows, x.user_stats, x.user_rates)  # (B, d_u)
        i = self.item_tower(x.item_rows, x.duration)  # (B, d_i)
        c = self.cross_tower(x.note_stats, x.note_rates, x.user_rates)  # (B, d_c)
        return self.head(u, i, c)

    def loss(
        self,
        logits: dict[str, torch.Tensor],
        cols: Columns,
        teacher: dict[str, np.ndarray] | None = None,
    ) -> torch.Tensor:
        """The ranker's task losses on the labels (+ `distill` x cross-entropy against the
        `teacher`'s uncalibrated probabilities, "watch" as sigmoid of its logit)."""
        keep = torch.from_numpy(cols.keep_rate).clamp_min(1e-6)  # (B,)
        inverse = 1.0 / keep
        inverse = inverse / inverse.mean()  # importance weights, mean 1
        total = torch.zeros(())
        for t in self.config.tasks:
            y = torch.from_numpy(cols.labels[t])  # (B,)
            w = None if t in self.config.calibrated else inverse
            total = total + fn.binary_cross_entropy_with_logits(logits[t], y, weight=w)
        t_units = torch.from_numpy(cols.watch_ms) / self.config.watch_unit_ms  # (B,)
        y_watch = t_units / (1.0 + t_units)  # (B,)
        total = total + fn.binary_cross_entropy_with_logits(logits[WATCH], y_watch, weight=inverse)
        if teacher is not None and self.config.distill > 0:
            soft = torch.zeros(())
            for t in self.tasks:
                p = torch.from_numpy(np.asarray(teacher[t], dtype=np.float32)).clamp(0, 1)  # (B,)
                soft = soft + fn.binary_cross_entropy_with_logits(logits[t], p)
            total = total + self.config.distill * soft
        return total


@torch.no_grad()
def fit_offsets(
    logits: dict[str, torch.Tensor],
    cols: Columns,
    tasks: tuple[str, ...],
    calibrated: tuple[str, ...],
    a: float,
) -> dict[str, float]:
    """Per task the scalar that, added to its logits, makes the mean final prediction on `cols`
    (a `calibrated` task's corrected with the negative keep rate `a`) equal the task's rate
    there, both weighted by 1 / keep_rate, as `RankerState.recalibrate` fits the ranker's."""
    inverse = torch.from_numpy(1.0 / np.maximum(cols.keep_rate, 1e-6))  # (B,)
    return {
        t: fit_offset(
            logits[t], torch.from_numpy(cols.labels[t]), inverse, a if t in calibrated else None
        )
        for t in tasks
    }


def teacher_probabilities(ranker: Ranker | object, cols: Columns) -> dict[str, np.ndarray]:
    """The ranker's uncalibrated task probabilities on `cols` (a `RankerModelState`), "watch"
    as t / (1 + t) of its expected watch time: the distillation targets."""
    pred = ranker.predict(cols, calibrated=False)
    units = np.asarray(pred.pop("watch_ms"), np.float64) / ranker.config.watch_unit_ms
    return {**pred, WATCH: units / (1.0 + units)}


class PreRankerModelState(CalibratedMeta, _ModelState):
    """The pre-ranker, its ID tables, calibration rate, and the item tower's cached outputs."""

    kind = "preranker"
    config_type = PreRankerConfig
    model_type = PreRankingModel
    store_seed_offset = 200
    config: PreRankerConfig
    model: PreRankingModel

    def __init__(self, config: PreRankerConfig, embeddings: dict, seed: int = 0) -> None:
        super().__init__(config, embeddings, seed)
        self.neg_keep_rate = 1.0
        self.logit_offsets: dict[str, float] = {}
        """Per task, a scalar added to its logit (`fit_offsets`, as the ranker's)."""
        self._items: dict[str, int] = {}
        """Note -> its row of `_item_rows` (cleared whenever the model may have changed)."""
        self._item_rows = torch.zeros(0)
        """(capacity, d_i) the item tower outputs of the notes of `_items`."""
        self._items_lock = threading.Lock()

    def clear_cache(self) -> None:
        """Forget the cached item tower outputs (after any change to the model)."""
        with self._items_lock:
            self._items, self._item_rows = {}, torch.zeros(0)

    @torch.no_grad()
    def item_vectors(self, cols: Columns) -> torch.Tensor:
        """(n, d_i) item tower outputs of the notes of `cols`, computed once per note.

        A note's author, category and duration are those of the first request that scored it
        (they do not change for a published note). The outputs are rows of one matrix, gathered
        by index (stacking one tensor per note cost ~5 ms at 2,000 candidates).
        """
        with self._items_lock:
            cache = self._items
            missing = list(dict.fromkeys(n for n in cols.note_id if n not in cache))
            if missing:
                first = {n: j for j, n in reversed(list(enumerate(cols.note_id)))}
                sub = cols.take(np.array([first[n] for n in missing]))
                x = self.model.inputs(sub, observe=False)
                out = self.model.item_tower(x.item_rows, x.duration)  # (m, d_i)
                start, rows = len(cache), self._item_rows
                if start + len(missing) > len(rows):
                    grown = torch.zeros(
                        max(2 * len(rows), start + len(missing), 1_024), out.shape[1]
                    )
                    if start:
                        grown[:start] = rows[:start]
                    self._item_rows = rows = grown
                rows[start : start + len(missing)] = out
                cache.update(zip(missing, range(start, start + len(missing)), strict=True))
            at = np.fromiter((cache[n] for n in cols.note_id), np.int64, len(cols.note_id))
            return self._item_rows.index_select(0, torch.from_numpy(at))  # (n, d_i)

    @torch.no_grad()
    def predict(self, cols: Columns, calibrated: bool = True) -> dict[str, np.ndarray]:
        """Per-task probabilities (calibrated for down-sampling) and "watch_ms" of one user's
        candidates: the user tower once (row 0), the item tower from its cache, the cross tower
        and the upper layers per candidate."""
        m, c = self.model, self.config
        with evaluating(m):
            n = len(cols)
            user = cols.take(np.zeros(1, dtype=np.int64))  # the user's inputs, once
            u_rows = torch.from_numpy(self.store["user"].rows(user.user_id))  # (1,)
            u_rates = rate_tensor(user.user_stats, c.rate_prior_strength, c.priors)  # (1, R)
            u_stats = stat_tensor(user.user_stats, c.stat_buckets)
            u = m.user_tower(u_rows, u_stats, u_rates)  # (1, d_u)
            i = self.item_vectors(cols)  # (n, d_i)
            note_rates = rate_tensor(cols.note_stats, c.rate_prior_strength, c.priors)  # (n, R)
            x = m.cross_tower(
                stat_tensor(cols.note_stats, c.stat_buckets), note_rates, u_rates.expand(n, -1)
            )  # (n, d_c)
            logits = m.head(u.expand(n, -1), i, x)
        return self.outputs(logits, calibrated)

    @torch.no_grad()
    def predict_batch(self, cols: Columns, calibrated: bool = True) -> dict[str, np.ndarray]:
        """`predict` for rows of many users (every tower on every row, no cache)."""
        with evaluating(self.model):
            logits = self.model(self.model.inputs(cols, observe=False))
        return self.outputs(logits, calibrated)

    def outputs(self, logits: dict[str, torch.Tensor], calibrated: bool) -> dict[str, np.ndarray]:
        """Final per-task numbers from the logits (as `RankerModelState.outputs`)."""
        res = {}
        for t in self.config.tasks:
            p = torch.sigmoid(logits[t] + self.logit_offsets.get(t, 0.0))
            if calibrated and t in self.config.calibrated:
                p = calibrate(p, self.neg_keep_rate)
            res[t] = p.numpy().astype(np.float64)
        res["watch_ms"] = (torch.exp(logits[WATCH]) * self.config.watch_unit_ms).numpy()
        return res


class PreRanker(_Scorer):
    """Scores one user's merged candidates with the published pre-ranker (calibrated)."""

    state_type = PreRankerModelState

    @property
    def cached(self) -> int:
        """Notes whose item tower output is cached."""
        return len(self._state._items)

    def score(
        self,
        user_id: str,
        note_ids: list[str],
        author_ids: list[str],
        categories: list[str],
        user_stats: np.ndarray,
        note_stats: np.ndarray,
        durations: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Calibrated per-task probabilities (n,) of each note and "watch_ms" (as `Ranker.score`;
        positions and history are not pre-ranker inputs)."""
        if not note_ids:
            return {t: np.zeros(0) for t in (*self.tasks, "watch_ms")}
        cols = Ranker.columns(
            user_id, note_ids, author_ids, categories, user_stats, note_stats, durations=durations
        )
        return self._state.predict(cols)


__all__ = [
    "CrossTower",
    "ItemTower",
    "PreRanker",
    "PreRankerConfig",
    "PreRankerInputs",
    "PreRankerModelState",
    "PreRankingModel",
    "ThreeTowerHead",
    "UserTower",
    "fit_offsets",
    "teacher_probabilities",
]
