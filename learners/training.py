"""A model with its ID tables and training state: steps, predictions, snapshot (de)serialising.

`RankerState` and `RetrieverState` are what the online and full learners train and publish,
and what `learners.inference` rebuilds from a snapshot. Everything needed to rebuild a model is
in the snapshot: hyperparameters in `meta`, dense parameters in `dense.safetensors` (prefix
`dense.`), Adagrad accumulators and last-seen times of the ID rows, and the retriever's
frequency estimate, note side information and click counts (JSON bytes as a uint8 array).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
import torch

from features.samples import STAT_FEATURES
from learners.calibration import calibrate
from learners.config import (
    ID_TABLES,
    EmbeddingConfig,
    RankerConfig,
    RetrieverConfig,
    config_from_dict,
    config_to_dict,
)
from learners.embeddings import EmbeddingStore
from learners.errors import ModelConfigError
from learners.inputs import Columns
from learners.mmoe import WATCH, RankingModel, TaskOutput
from learners.snapshots import Snapshot, TableRows
from learners.two_tower import RetrievalBatch, StreamingFrequency, TwoTowerModel

ITEM_TABLE = "item"
"""Retriever snapshot table of item-tower vectors, one row per known note (for faiss)."""
DENSE_PREFIX = "dense."


def _dense_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {DENSE_PREFIX + k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _load_dense(model: torch.nn.Module, dense: dict[str, np.ndarray]) -> None:
    state = {
        k[len(DENSE_PREFIX) :]: torch.from_numpy(np.array(v))
        for k, v in dense.items()
        if k.startswith(DENSE_PREFIX)
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelConfigError(
            f"snapshot dense parameters do not fit the model (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}): publish a full snapshot with `streamrec learn full`"
        )


def _json_array(obj: object) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8).copy()


def _from_json_array(a: np.ndarray | None) -> object:
    return None if a is None else json.loads(bytes(np.asarray(a, dtype=np.uint8)))


def _check_meta(meta: dict, kind: str) -> None:
    if meta.get("kind") != kind:
        raise ModelConfigError(
            f"the snapshot holds a {meta.get('kind')!r} model, not a {kind!r}: check the model name"
        )
    if tuple(meta.get("stat_features", ())) != STAT_FEATURES:
        raise ModelConfigError(
            "the snapshot was trained on other statistics than STAT_FEATURES: retrain it "
            "(`streamrec learn full`) on samples of this version"
        )


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

    def delta_meta(self, changed: dict[str, TableRows]) -> dict:
        """Meta a delta of `changed` rows carries beyond them (none by default)."""
        del changed  # the base model has nothing to add
        return {}

    def freeze_dense(self) -> None:
        """Dense parameters and the shared default ID rows stop learning (online mode); the
        model runs in eval mode."""
        for p in self.model.parameters():
            p.requires_grad_(False)
        for emb in self.model.id_embeddings():
            emb.train_default = False
        self.model.eval()

    def set_embedding_lr(self, lr: float) -> None:
        """Use Adagrad learning rate `lr` for every ID table from now on (not saved in `meta`)."""
        for table in self.store.tables.values():
            table.config = replace(table.config, lr=lr)

    def unfreeze(self) -> None:
        """Every parameter learns again (full training); the model runs in training mode."""
        for p in self.model.parameters():
            p.requires_grad_(True)
        for emb in self.model.id_embeddings():
            emb.train_default = True
        self.model.train()

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


class RankerState(_State):
    """The ranker (MMoE or shared-bottom), its ID tables and calibration rate."""

    def __init__(
        self, config: RankerConfig, embeddings: dict[str, EmbeddingConfig], seed: int = 0
    ) -> None:
        torch.manual_seed(seed)
        self.config = config
        self.embeddings = embeddings
        self.store = EmbeddingStore(embeddings, seed=seed)
        self.model = RankingModel(self.store, config)
        self.neg_keep_rate = 1.0
        self.logit_offsets: dict[str, float] = {}
        """Per calibrated task, a scalar added to its logit (`recalibrate`)."""
        self.hwm_ms = 0

    @classmethod
    def create(cls, config: RankerConfig, emb: EmbeddingConfig, seed: int = 0) -> RankerState:
        """A new ranker whose tables share `emb` settings but use `config.id_dims`."""
        tables = {t: _with_dim(emb, config.id_dims[t]) for t in ID_TABLES}
        return cls(config, tables, seed)

    def train_step(self, cols: Columns, optimizer: torch.optim.Optimizer | None) -> StepResult:
        """One step: ID rows always (Adagrad), dense parameters only with an `optimizer`."""
        negatives = cols.labels["click"] == 0
        if negatives.any():
            self.neg_keep_rate = float(cols.keep_rate[negatives].min())
        self.hwm_ms = max(self.hwm_ms, int(cols.ts.max()))
        out = self.model(self.model.inputs(cols, observe=True))
        loss = self.model.loss(out, cols)
        self._step(loss, len(cols), optimizer)
        return StepResult(float(loss.detach()), len(cols), out.gate_entropy())

    @torch.no_grad()
    def predict(self, cols: Columns, calibrated: bool = True) -> dict[str, np.ndarray]:
        """Per-task probabilities (calibrated for down-sampling) and "watch_ms"."""
        out = self._forward(cols)
        for t, offset in self.logit_offsets.items():
            out.logits[t] = out.logits[t] + offset
        return self.outputs(self.model.probabilities(out), out.logits[WATCH], calibrated)

    def _forward(self, cols: Columns) -> TaskOutput:
        """The model's raw output on `cols` in eval mode (its mode is restored after)."""
        was = self.model.training
        self.model.eval()
        out = self.model(self.model.inputs(cols, observe=False))
        self.model.train(was)
        return out

    @torch.no_grad()
    def recalibrate(self, cols: Columns, most: int = 200_000, seed: int = 0) -> dict[str, float]:
        """Fit each calibrated task's logit offset so that its mean raw prediction on `cols`
        equals the task's rate there; return the offsets.

        The down-sampling calibration p = a q / (1 - q + a q) is exact only for a q that is
        right on the sampled data, and a model's mean q wanders with the last optimiser steps
        (up to 6 % off its own training data in tests/learners/test_models.py). Full training
        calls this on its log (a sample of `most` rows); online mode keeps the offsets, as it
        keeps the dense parameters.
        """
        if len(cols) > most:
            pick = np.random.default_rng(seed).choice(len(cols), most, replace=False)
            cols = cols.take(np.sort(pick))
        out = self._forward(cols)
        for t in self.config.calibrated:
            z = out.logits[t].double()  # (B,)
            target = float(cols.labels[t].mean())
            lo, hi = -20.0, 20.0
            for _ in range(60):  # bisection: mean sigmoid(z + d) is increasing in d
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if float(torch.sigmoid(z + mid).mean()) < target else (lo, mid)
            self.logit_offsets[t] = (lo + hi) / 2
        return dict(self.logit_offsets)

    def outputs(
        self, probs: dict[str, torch.Tensor], watch_logit: torch.Tensor, calibrated: bool = True
    ) -> dict[str, np.ndarray]:
        """Final per-task numbers from probabilities and the watch logit."""
        res = {}
        for t in self.config.tasks:
            p = probs[t]
            if calibrated and t in self.config.calibrated:
                p = calibrate(p, self.neg_keep_rate)
            res[t] = p.numpy().astype(np.float64)
        res["watch_ms"] = (torch.exp(watch_logit) * self.config.watch_unit_ms).numpy()
        return res

    def meta(self, extra: dict | None = None) -> dict:
        """Snapshot meta: everything needed to rebuild the model."""
        return {
            "kind": "ranker",
            "hyper": config_to_dict(self.config),
            "embeddings": {t: config_to_dict(c) for t, c in self.embeddings.items()},
            "neg_keep_rate": self.neg_keep_rate,
            "logit_offsets": self.logit_offsets,
            "stat_features": list(STAT_FEATURES),
            **(extra or {}),
        }

    def full_state(self) -> tuple[dict[str, TableRows], dict[str, np.ndarray]]:
        """Tables and dense arrays of a full snapshot."""
        tables, extra = self.store.export()
        return tables, {**_dense_state(self.model), **extra}

    def changed(self) -> dict[str, TableRows]:
        """Rows changed since the last `clear_changed` (a delta)."""
        return self.store.changed()

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> RankerState:
        """Rebuild the ranker as published (full + deltas)."""
        meta = snap.manifest.meta
        _check_meta(meta, "ranker")
        state = cls(
            config_from_dict(RankerConfig, meta["hyper"]),
            {t: config_from_dict(EmbeddingConfig, c) for t, c in meta["embeddings"].items()},
        )
        _load_dense(state.model, snap.dense)
        state.store.load(snap.tables, snap.dense, snap.manifest.hwm_ms)
        state.neg_keep_rate = float(meta.get("neg_keep_rate", 1.0))
        state.logit_offsets = {t: float(v) for t, v in meta.get("logit_offsets", {}).items()}
        state.hwm_ms = snap.manifest.hwm_ms
        return state


def _with_dim(emb: EmbeddingConfig, dim: int) -> EmbeddingConfig:
    return replace(emb, dim=dim)


class RetrieverState(_State):
    """The two-tower retriever, its ID tables, frequency estimate, side info and click counts."""

    def __init__(
        self, config: RetrieverConfig, embeddings: dict[str, EmbeddingConfig], seed: int = 0
    ) -> None:
        torch.manual_seed(seed)
        self.config = config
        self.embeddings = embeddings
        self.store = EmbeddingStore(embeddings, seed=seed + 100)
        self.model = TwoTowerModel(self.store, config)
        self.freq = StreamingFrequency(config.freq_buckets, config.freq_alpha)
        self.side: dict[str, tuple[str, str, int]] = {}  # note -> (author, category, last seen)
        self.clicks: dict[str, float] = {}
        self._sampler: tuple[list[str], np.ndarray] | None = None
        self._since_sampler = 0
        self._rng = np.random.default_rng(seed)
        self._published_items: dict[str, np.ndarray] = {}
        self.hwm_ms = 0

    @classmethod
    def create(cls, config: RetrieverConfig, emb: EmbeddingConfig, seed: int = 0) -> RetrieverState:
        """A new retriever whose tables share `emb` settings but use `config.id_dims`."""
        tables = {t: _with_dim(emb, config.id_dims[t]) for t in ID_TABLES}
        return cls(config, tables, seed)

    def _note_rows(self, notes: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        authors = [self.side[n][0] if n in self.side else "" for n in notes]
        cats = [self.side[n][1] if n in self.side else "" for n in notes]
        return (
            torch.from_numpy(self.store["note"].rows(notes)),
            torch.from_numpy(self.store["author"].rows(authors)),
            torch.from_numpy(self.store["category"].rows(cats)),
        )

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
        for n, a, c, t in zip(
            cols.note_id, cols.author_id, cols.category, cols.ts.tolist(), strict=True
        ):
            self.side[n] = (a, c, t)

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
        return RetrievalBatch(
            user_rows=torch.from_numpy(get("user", pos.user_id)),
            user_stats=self.model.stats_tensor(pos.user_stats),
            item_rows=(
                torch.from_numpy(get("note", pos.note_id)),
                torch.from_numpy(get("author", pos.author_id)),
                torch.from_numpy(get("category", pos.category)),
            ),
            item_logq=logq,
            same_item=same,
            **extra,
        )

    @torch.no_grad()
    def user_vectors(self, users: list[str], stats: np.ndarray) -> np.ndarray:
        """(n, d) unit user vectors (unknown users read the default row)."""
        self.model.eval()
        rows = torch.from_numpy(self.store["user"].rows(users))
        return self.model.encode_user(rows, self.model.stats_tensor(stats)).numpy()

    @torch.no_grad()
    def item_vectors(self, notes: list[str] | None = None) -> tuple[list[str], np.ndarray]:
        """(ids, (n, d) unit vectors) of `notes` with known side info (all when None)."""
        self.model.eval()
        ids = list(self.side) if notes is None else [n for n in notes if n in self.side]
        if not ids:
            return [], np.zeros((0, self.config.out_dim), np.float32)
        return ids, self.model.encode_item(*self._note_rows(ids)).numpy()

    def expire(self, now_ms: int) -> int:
        """Expire ID rows, side info and click counts older than the TTL."""
        freed = self.store.expire(now_ms)
        cutoff = now_ms - self.store["note"].config.ttl_ms
        for n in [n for n, (_, _, t) in self.side.items() if t < cutoff]:
            del self.side[n]
            self.clicks.pop(n, None)
        limit = self.store["note"].config.max_rows
        if len(self.side) > limit:
            newest = sorted(self.side.items(), key=lambda kv: -kv[1][2])[:limit]
            self.side = dict(newest)
            self.clicks = {n: c for n, c in self.clicks.items() if n in self.side}
        self._sampler = None
        return freed

    def meta(self, extra: dict | None = None) -> dict:
        """Snapshot meta: everything needed to rebuild the model."""
        return {
            "kind": "retriever",
            "hyper": config_to_dict(self.config),
            "embeddings": {t: config_to_dict(c) for t, c in self.embeddings.items()},
            "stat_features": list(STAT_FEATURES),
            **(extra or {}),
        }

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
        side = {n: [a, c, t] for n, (a, c, t) in self.side.items()}
        dense = {
            **_dense_state(self.model),
            **extra,
            **self.freq.state(),
            "side.notes": _json_array(side),
            "side.clicks": _json_array(self.clicks),
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
    def from_snapshot(cls, snap: Snapshot) -> RetrieverState:
        """Rebuild the retriever as published (full + deltas)."""
        meta = snap.manifest.meta
        _check_meta(meta, "retriever")
        state = cls(
            config_from_dict(RetrieverConfig, meta["hyper"]),
            {t: config_from_dict(EmbeddingConfig, c) for t, c in meta["embeddings"].items()},
        )
        _load_dense(state.model, snap.dense)
        state.store.load(snap.tables, snap.dense, snap.manifest.hwm_ms)
        state.freq.restore(snap.dense)
        side = _from_json_array(snap.dense.get("side.notes")) or {}
        for meta in snap.delta_metas:  # notes new since the full, oldest delta first
            side.update(meta.get("side", {}))
        state.side = {n: (a, c, int(t)) for n, (a, c, t) in side.items()}
        state.clicks = {
            n: float(c) for n, c in (_from_json_array(snap.dense.get("side.clicks")) or {}).items()
        }
        if ITEM_TABLE in snap.tables:
            items = snap.tables[ITEM_TABLE]
            state._published_items = dict(zip(items.ids, items.weights, strict=True))
        state.hwm_ms = snap.manifest.hwm_ms
        return state
