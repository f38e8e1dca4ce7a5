"""Training on top of the scoring models: steps, recalibration, snapshot contents, expiry.

`RankerState` and `RetrieverState` are what the online and full learners train and publish.
They extend `learners.models.RankerModelState` / `RetrieverModelState` (rebuilding from a
snapshot, scoring: what `learners.inference` uses in serving) with the training steps, dense
freezing for online mode, the retriever's negative sampler, frequency estimate and click
counts, and the full / delta contents of a snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Self

import numpy as np
import torch

from features.schema import FeatureConfig
from learners.calibration import OffsetTracker, PrequentialAUC, fit_offset
from learners.config import EmbeddingConfig, RetrieverConfig
from learners.embeddings import EmbeddingStore
from learners.inputs import Columns
from learners.models import (
    ITEM_TABLE,
    RankerModelState,
    RetrieverModelState,
    dense_state,
    from_json_array,
    json_array,
)
from learners.modules import evaluating
from learners.preranker import PreRankerModelState, fit_offsets, teacher_probabilities
from learners.snapshots import Snapshot, TableRows
from learners.two_tower import RetrievalBatch, StreamingFrequency

__all__ = [
    "ITEM_TABLE",
    "PreRankerState",
    "RankerState",
    "RetrieverState",
    "StepResult",
    "applied_offsets",
    "check_priors",
]
logger = logging.getLogger(__name__)
_PRIOR_FIELDS = ("ctr_prior", "engagement_prior", "completion_prior")


def check_priors(ranker: RankerModelState, features: FeatureConfig | None) -> bool:
    """Whether `ranker` smooths its rates towards the priors of `features` (None: no check).

    A model keeps the priors it was trained with (its snapshot carries them: the dense layers
    were fitted to inputs centred on them); when the settings name others, this logs a warning
    and returns False. A fresh full training (no snapshot to warm-start from) adopts them.
    """
    if features is None:
        return True
    have = {k: getattr(ranker.config.priors, k) for k in _PRIOR_FIELDS}
    want = {k: getattr(features, k) for k in _PRIOR_FIELDS}
    if have == want:
        return True
    logger.warning(
        "the ranker snapshot smooths its rates towards %s but the settings' features name %s; "
        "it keeps its own (its layers were trained on them) - train from scratch (an empty "
        "snapshot root) to adopt the new priors",
        have,
        want,
    )
    return False


def applied_offsets(metas: Iterable[dict | None]) -> dict[int, int]:
    """The `training-samples` offsets every model has applied: where a restart resumes.

    `metas` are the snapshot metas the models were loaded from (None: a fresh model, nothing
    applied). Per partition the minimum of the models' `offsets` (the next offset each has
    applied); a partition absent from any model's offsets is absent here (read from the
    beginning), since that model has applied nothing of it. So no model skips a sample; the
    learner gives each model only what is past its own offsets (docs/learning.md "Restarts").
    """
    per_model = [
        {int(p): int(o) for p, o in ((m or {}).get("offsets") or {}).items()} for m in metas
    ]
    if not per_model:
        return {}
    common = set.intersection(*(set(o) for o in per_model))
    return {p: min(o[p] for o in per_model) for p in sorted(common)}


@dataclass
class StepResult:
    """What one training step reports."""

    loss: float
    samples: int
    gate_entropy: float = float("nan")


class _State:
    """Common part: the model, its store, dense freezing, the sparse step."""

    model: torch.nn.Module
    store: EmbeddingStore
    hwm_ms: int = 0

    def full_state(self) -> tuple[dict[str, TableRows], dict[str, np.ndarray]]:
        """Tables and dense arrays of a full snapshot."""
        tables, extra = self.store.export()
        return tables, {**dense_state(self.model), **extra}

    def changed(self) -> dict[str, TableRows]:
        """Rows changed since the last `clear_changed` (a delta)."""
        return self.store.changed()

    def delta_meta(self, changed: dict[str, TableRows]) -> dict:
        """Meta a delta of `changed` rows carries beyond them (none by default)."""
        del changed  # the base model has nothing to add
        return {}

    def _learn_dense(self, on: bool) -> None:
        """Dense parameters and the shared default ID rows learn (`on`) or not; the model runs
        in training mode or eval mode to match."""
        for p in self.model.parameters():
            p.requires_grad_(on)
        for emb in self.model.id_embeddings():
            emb.train_default = on
        self.model.train(on)

    def freeze_dense(self) -> None:
        """Dense parameters and the shared default ID rows stop learning (online mode); the
        model runs in eval mode."""
        self._learn_dense(False)

    def set_embedding_lr(self, lr: float) -> None:
        """Use Adagrad learning rate `lr` for every ID table from now on (not saved in `meta`)."""
        for table in self.store.tables.values():
            table.config = replace(table.config, lr=lr)

    def set_id_dropout(self, p: float, seed: int) -> None:
        """ID dropout `p` in every ID embedding while the model trains fully (`unfreeze`)."""
        for i, emb in enumerate(self.model.id_embeddings()):
            emb.set_dropout(p, seed + i)

    def unfreeze(self) -> None:
        """Every parameter learns again (full training); the model runs in training mode."""
        self._learn_dense(True)

    def expire(self, now_ms: int) -> int:
        """Expire ID rows not seen for the TTL; return how many were freed."""
        return self.store.expire(now_ms)

    def dense_parameters(self) -> list[torch.nn.Parameter]:
        """The dense parameters (every module parameter; ID tables are not parameters)."""
        return list(self.model.parameters())

    def _step(
        self, loss: torch.Tensor, samples: int, optimizer: torch.optim.Optimizer | None
    ) -> None:
        """Backward of the batch-mean `loss` over `samples`; ID rows step on the summed loss."""
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for emb in self.model.id_embeddings():
            emb.sparse_step(float(samples))
        if optimizer is not None:
            optimizer.step()


class RankerState(_State, RankerModelState):
    """The ranker in training: its steps, the logit recalibration, full and delta contents."""

    tracker: OffsetTracker | None = None
    """Online: refits the logit offsets on predictions made before learning (`track_offsets`)."""
    prequential: PrequentialAUC | None = None
    """Online: the AUC of predictions made before learning (`track_auc`)."""

    def train_step(self, cols: Columns, optimizer: torch.optim.Optimizer | None) -> StepResult:
        """One step: ID rows always (Adagrad), dense parameters only with an `optimizer`."""
        negatives = cols.labels["click"] == 0
        if negatives.any():
            self.neg_keep_rate = float(cols.keep_rate[negatives].min())
        self.hwm_ms = max(self.hwm_ms, int(cols.ts.max()))
        out = self.model(self.model.inputs(cols, observe=True))
        if self.tracker is not None and not self.model.training:
            # online (eval mode): `out` predicts samples the model has not learnt from yet
            self.logit_offsets.update(
                self.tracker.observe(out.logits, cols.labels, cols.keep_rate, self.neg_keep_rate)
            )
        if self.prequential is not None and not self.model.training:
            self.prequential.observe(out.logits, cols.labels)
        loss = self.model.loss(out, cols)
        self._step(loss, len(cols), optimizer)
        return StepResult(float(loss.detach()), len(cols), out.gate_entropy())

    def track_offsets(self, window: int) -> None:
        """Online: refit the logit offsets after every step on the predictions for the newest
        `window` samples, each made before the model learnt from it (`OffsetTracker`); 0 keeps
        the offsets full training fitted."""
        self.tracker = OffsetTracker(self._fitted(), window) if window else None

    def track_auc(self, window: int, keep: PrequentialAUC | None = None) -> None:
        """Online: keep the AUC of each binary task over the newest `window` predictions made
        before learning (`keep`: continue that one's ring); 0 keeps none."""
        self.prequential = keep or (PrequentialAUC(self.config.tasks, window) if window else None)

    def _fitted(self) -> dict[str, bool]:
        """Tasks whose logit offset is fitted -> whether their prediction is corrected for
        down-sampling (`RankerConfig.calibrated`; the others are importance weighted)."""
        # with ESMM a task's prediction is pCTR x sigmoid(its logit): only click is fitted here
        tasks = self.config.calibrated if self.config.esmm else self.config.tasks
        return {t: t in self.config.calibrated for t in tasks}

    def fit_base(self, cols: Columns, most: int = 200_000, seed: int = 0) -> None:
        """Refit the base logits (`RankerConfig.base_tasks`) on at most `most` rows of `cols`.

        Full training calls it after its pass, before `recalibrate`: the core has trained
        without the base, and the offsets are fitted on the sum the model predicts with.
        """
        if self.model.base is None:
            return
        if len(cols) > most:
            pick = np.random.default_rng(seed).choice(len(cols), most, replace=False)
            cols = cols.take(np.sort(pick))
        self.model.fit_base(cols)

    @torch.no_grad()
    def recalibrate(self, cols: Columns, most: int = 200_000, seed: int = 0) -> dict[str, float]:
        """Fit each task's logit offset so that its mean prediction on `cols` equals the task's
        rate there; return the offsets.

        The down-sampling calibration p = a q / (1 - q + a q) is exact only for a q that is
        right on the sampled data, and a model's mean q wanders with the last optimiser steps
        (up to 6 % off its own training data in tests/learners/test_models.py); the
        importance-weighted tasks drift too (KuaiRand completion at a = 0.25: 1.25x the
        observed rate without this). Each task's final prediction (a calibrated task's after
        the correction) is matched on the samples weighted by 1 / keep_rate, i.e. on every
        impression, to the weighted rate, the rate before down-sampling
        (`learners.calibration.fit_offset`). Full training calls this on its log (a sample of
        `most` rows), where the model is more confident than on new data; online,
        `track_offsets` refits them on predictions for samples the model had not learnt from.
        """
        if len(cols) > most:
            pick = np.random.default_rng(seed).choice(len(cols), most, replace=False)
            cols = cols.take(np.sort(pick))
        out = self._forward(cols)
        inverse = torch.from_numpy(1.0 / np.maximum(cols.keep_rate, 1e-6))  # (B,)
        for t, corrected in self._fitted().items():
            a = self.neg_keep_rate if corrected else None
            y = torch.from_numpy(cols.labels[t])  # (B,)
            self.logit_offsets[t] = fit_offset(out.logits[t], y, inverse, a)
        return dict(self.logit_offsets)


class RetrieverState(_State, RetrieverModelState):
    """The retriever in training: frequency estimate, click counts and negative sampler, steps,
    expiry of side info, full and delta contents (item vectors included)."""

    def __init__(
        self, config: RetrieverConfig, embeddings: dict[str, EmbeddingConfig], seed: int = 0
    ) -> None:
        super().__init__(config, embeddings, seed)
        self.freq = StreamingFrequency(config.freq_buckets, config.freq_alpha)
        self.clicks: dict[str, float] = {}
        self._sampler: tuple[list[str], np.ndarray] | None = None
        self._since_sampler = 0
        self._rng = np.random.default_rng(seed)
        self._published_items: dict[str, np.ndarray] = {}

    def _negatives(self, m: int) -> list[str]:
        if m <= 0 or not self.clicks:
            return []
        if self._sampler is None or self._since_sampler >= 50:
            ids = [n for n in self.clicks if n in self.side]
            if not ids:
                return []
            w = np.array([self.clicks[n] for n in ids]) ** self.config.neg_power
            self._sampler = (ids, w / w.sum())
            self._since_sampler = 0
        self._since_sampler += 1
        ids, p = self._sampler
        draw = self._rng.choice(len(ids), size=m, p=p)
        self._neg_p = p[draw]
        return [ids[i] for i in draw]

    def observe_side(self, cols: Columns) -> None:
        """Remember each note's author and category (needed to encode items without samples)."""
        durations = cols.item_duration_ms.astype(np.int64).tolist()
        for n, a, c, t, d in zip(
            cols.note_id, cols.author_id, cols.category, cols.ts.tolist(), durations, strict=True
        ):
            self.side[n] = (a, c, t, d)

    def train_step(self, cols: Columns, optimizer: torch.optim.Optimizer | None) -> StepResult:
        """One step on the clicked samples of `cols` (unclicked ones only update side info)."""
        self.observe_side(cols)
        self.hwm_ms = max(self.hwm_ms, int(cols.ts.max()))
        clicked = np.flatnonzero(cols.labels["click"] > 0)
        if len(clicked) < 2:
            return StepResult(float("nan"), 0)
        pos = cols.take(clicked)
        batch = self.batch(pos, observe=True)
        for n in pos.note_id:
            self.clicks[n] = self.clicks.get(n, 0.0) + 1.0
        self.freq.update(pos.note_id)
        loss = self.model.loss(batch)
        self._step(loss, len(pos), optimizer)
        return StepResult(float(loss.detach()), len(pos))

    def batch(self, pos: Columns, observe: bool) -> RetrievalBatch:
        """Tensors of clicked samples `pos`, with the sampled negatives."""
        st = self.store
        get = (lambda t, v: st[t].observe(v, pos.ts)) if observe else (lambda t, v: st[t].rows(v))
        notes = np.array(pos.note_id)
        same = torch.from_numpy(notes[:, None] == notes[None, :])  # (B, B)
        logq = torch.from_numpy(np.log(self.freq.probability(pos.note_id))).float()  # (B,)
        neg = self._negatives(self.config.extra_negatives)
        extra = {}
        if neg:
            m = len(neg)
            extra = {
                "neg_rows": self._note_rows(neg),
                "neg_logq": torch.from_numpy(np.log(self._neg_p * m)).float(),  # (M,)
                "neg_is_pos": torch.from_numpy(notes[:, None] == np.array(neg)[None, :]),
            }
        items = (
            torch.from_numpy(get("note", pos.note_id)),
            torch.from_numpy(get("author", pos.author_id)),
            torch.from_numpy(get("category", pos.category)),
        )
        return RetrievalBatch(
            user_rows=torch.from_numpy(get("user", pos.user_id)),
            user_stats=self.model.stats_tensor(pos.user_stats),
            history=self.model.history_tensor(pos.history),
            item_rows=items,
            item_logq=logq,
            same_item=same,
            **extra,
        )

    def expire(self, now_ms: int) -> int:
        """Expire ID rows, side info and click counts older than the TTL."""
        freed = self.store.expire(now_ms)
        cutoff = now_ms - self.store["note"].config.ttl_ms
        for n in [n for n, side in self.side.items() if side[2] < cutoff]:
            del self.side[n]
            self.clicks.pop(n, None)
        limit = self.store["note"].config.max_rows
        if len(self.side) > limit:
            newest = sorted(self.side.items(), key=lambda kv: -kv[1][2])[:limit]
            self.side = dict(newest)
            self.clicks = {n: c for n, c in self.clicks.items() if n in self.side}
        self._sampler = None
        return freed

    def _item_table(self, only_changed: bool) -> TableRows:
        ids, vecs = self.item_vectors()
        vecs = vecs.astype(np.float32)
        if only_changed:
            keep = [
                j
                for j, n in enumerate(ids)
                if n not in self._published_items
                or not np.array_equal(self._published_items[n], vecs[j])
            ]
        else:
            keep = list(range(len(ids)))
        self._published_items = dict(zip(ids, vecs, strict=True))
        return TableRows([ids[j] for j in keep], vecs[keep].reshape(-1, self.config.out_dim))

    def full_state(self) -> tuple[dict[str, TableRows], dict[str, np.ndarray]]:
        """Tables (ID rows + item vectors) and dense arrays of a full snapshot."""
        tables, extra = self.store.export()
        tables[ITEM_TABLE] = self._item_table(only_changed=False)
        side = {n: list(v) for n, v in self.side.items()}
        dense = {
            **dense_state(self.model),
            **extra,
            **self.freq.state(),
            "side.notes": json_array(side),
            "side.clicks": json_array(self.clicks),
        }
        return tables, dense

    def changed(self) -> dict[str, TableRows]:
        """ID rows changed since the last `clear_changed`, plus the item vectors that changed."""
        tables = self.store.changed()
        items = self._item_table(only_changed=True)
        if items.ids:
            tables[ITEM_TABLE] = items
        return tables

    def delta_meta(self, changed: dict[str, TableRows]) -> dict:
        """Meta a delta of `changed` carries beyond its rows: the side info (author, category,
        last seen) of the notes whose item vectors it holds, so that a consumer of the delta
        can rank a note that is new since the full."""
        ids = changed[ITEM_TABLE].ids if ITEM_TABLE in changed else []
        return {"side": {n: list(self.side[n]) for n in ids if n in self.side}}

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> Self:
        """Rebuild the retriever as published (full + deltas), with its training state."""
        state = super().from_snapshot(snap)
        state.freq.restore(snap.dense)
        state.clicks = {
            n: float(c) for n, c in (from_json_array(snap.dense.get("side.clicks")) or {}).items()
        }
        if ITEM_TABLE in snap.tables:
            items = snap.tables[ITEM_TABLE]
            state._published_items = dict(zip(items.ids, items.weights, strict=True))
        return state


class PreRankerState(_State, PreRankerModelState):
    """The three-tower pre-ranker in training: its steps, full and delta contents."""

    def train_step(
        self,
        cols: Columns,
        optimizer: torch.optim.Optimizer | None,
        teacher: RankerModelState | None = None,
    ) -> StepResult:
        """One step: ID rows always (Adagrad), dense parameters only with an `optimizer`; with
        a `teacher` (the ranker) and `config.distill` > 0, also towards its predictions."""
        negatives = cols.labels["click"] == 0
        if negatives.any():
            self.neg_keep_rate = float(cols.keep_rate[negatives].min())
        self.hwm_ms = max(self.hwm_ms, int(cols.ts.max()))
        soft = (
            teacher_probabilities(teacher, cols)
            if teacher is not None and self.config.distill > 0
            else None
        )
        logits = self.model(self.model.inputs(cols, observe=True))
        loss = self.model.loss(logits, cols, soft)
        self._step(loss, len(cols), optimizer)
        self.clear_cache()
        return StepResult(float(loss.detach()), len(cols))

    @torch.no_grad()
    def recalibrate(self, cols: Columns, most: int = 200_000, seed: int = 0) -> dict[str, float]:
        """Fit each task's logit offset on `cols` (a sample of `most` rows), as
        `RankerState.recalibrate` does for the ranker; return the offsets."""
        if len(cols) > most:
            pick = np.random.default_rng(seed).choice(len(cols), most, replace=False)
            cols = cols.take(np.sort(pick))
        with evaluating(self.model):
            logits = self.model(self.model.inputs(cols, observe=False))
        self.logit_offsets = fit_offsets(
            logits, cols, self.config.tasks, self.config.calibrated, self.neg_keep_rate
        )
        return dict(self.logit_offsets)
