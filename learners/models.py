"""A model with its ID tables, rebuilt from a snapshot and scored: no training code here.

`RankerModelState` and `RetrieverModelState` hold a model (`learners.mmoe.RankingModel`,
`learners.two_tower.TwoTowerModel`) and its embedding store; they rebuild both from a snapshot
(`from_snapshot`), describe them for one (`meta`) and compute what serving needs (calibrated
task probabilities, user and item vectors). `learners.inference` (serving) uses them alone;
`learners.training` builds `RankerState` / `RetrieverState` on top of them with the training
steps, optimiser hooks and snapshot writing, so serving never imports the training code
(an import-linter contract in pyproject.toml holds this).

Everything needed to rebuild a model is in the snapshot: hyperparameters in `meta`, dense
parameters in `dense.safetensors` (prefix `dense.`), Adagrad accumulators and last-seen times
of the ID rows, and the retriever's note side information (JSON bytes as a uint8 array).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any, ClassVar, Self

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
from learners.modules import evaluating
from learners.snapshots import Snapshot
from learners.two_tower import TwoTowerModel

ITEM_TABLE = "item"
"""Retriever snapshot table of item-tower vectors, one row per known note (for faiss)."""
DENSE_PREFIX = "dense."


def dense_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's parameters and buffers as snapshot dense arrays (prefix `dense.`)."""
    return {DENSE_PREFIX + k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def load_dense(model: torch.nn.Module, dense: dict[str, np.ndarray]) -> None:
    """Load snapshot dense arrays (`dense_state`) into `model`; raise if they do not fit."""
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


def json_array(obj: object) -> np.ndarray:
    """JSON of `obj` as a uint8 array (how side information travels in safetensors)."""
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8).copy()


def from_json_array(a: np.ndarray | None) -> object:
    """Inverse of `json_array` (None stays None)."""
    return None if a is None else json.loads(bytes(np.asarray(a, dtype=np.uint8)))


def check_meta(meta: dict, kind: str) -> None:
    """Raise `ModelConfigError` unless `meta` describes a `kind` model on `STAT_FEATURES`."""
    if meta.get("kind") != kind:
        raise ModelConfigError(
            f"the snapshot holds a {meta.get('kind')!r} model, not a {kind!r}: check the model name"
        )
    if tuple(meta.get("stat_features", ())) != STAT_FEATURES:
        raise ModelConfigError(
            "the snapshot was trained on other statistics than STAT_FEATURES: retrain it "
            "(`streamrec learn full`) on samples of this version"
        )


def with_dim(emb: EmbeddingConfig, dim: int) -> EmbeddingConfig:
    """`emb` with embedding dimension `dim`."""
    return replace(emb, dim=dim)


class _ModelState:
    """What the ranker and the retriever share: creation with one table setting, the snapshot
    meta and the rebuild from a snapshot. A subclass names its `kind` and `config_type` and adds
    its own meta (`_own_meta`) and restored state (`restore_meta`)."""

    kind: ClassVar[str]
    config_type: ClassVar[type]
    model_type: ClassVar[Callable[[EmbeddingStore, Any], torch.nn.Module]]
    store_seed_offset: ClassVar[int] = 0
    """Added to the seed of the ID tables (the ranker's and the retriever's differ)."""

    def __init__(self, config: Any, embeddings: dict[str, EmbeddingConfig], seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.config = config
        self.embeddings = embeddings
        self.store = EmbeddingStore(embeddings, seed=seed + self.store_seed_offset)
        self.model = self.model_type(self.store, config)
        self.hwm_ms = 0

    @classmethod
    def create(cls, config: Any, emb: EmbeddingConfig, seed: int = 0) -> Self:
        """A new model whose tables share `emb` settings but use `config.id_dims`."""
        tables = {t: with_dim(emb, config.id_dims[t]) for t in ID_TABLES}
        return cls(config, tables, seed)

    def _own_meta(self) -> dict:
        """Meta of this kind of model beyond the hyperparameters and tables."""
        return {}

    def meta(self, extra: dict | None = None) -> dict:
        """Snapshot meta: everything needed to rebuild the model."""
        return {
            "kind": self.kind,
            "hyper": config_to_dict(self.config),
            "embeddings": {t: config_to_dict(c) for t, c in self.embeddings.items()},
            **self._own_meta(),
            "stat_features": list(STAT_FEATURES),
            **(extra or {}),
        }

    def restore_meta(self, snap: Snapshot) -> None:
        """Restore what this kind of model keeps beyond its dense parameters and ID tables."""
        del snap

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> Self:
        """Rebuild the model as published (full + deltas)."""
        meta = snap.manifest.meta
        check_meta(meta, cls.kind)
        state = cls(
            config_from_dict(cls.config_type, meta["hyper"]),
            {t: config_from_dict(EmbeddingConfig, c) for t, c in meta["embeddings"].items()},
        )
        load_dense(state.model, snap.dense)
        state.store.load(snap.tables, snap.dense, snap.manifest.hwm_ms)
        state.restore_meta(snap)
        state.hwm_ms = snap.manifest.hwm_ms
        return state


class CalibratedMeta:
    """Snapshot meta of a model calibrated for down-sampling (the ranker, the pre-ranker): the
    negative keep rate its click learnt under and the per-task logit offsets."""

    neg_keep_rate: float
    logit_offsets: dict[str, float]

    def _own_meta(self) -> dict:
        """The calibration rate and the logit offsets."""
        return {"neg_keep_rate": self.neg_keep_rate, "logit_offsets": self.logit_offsets}

    def restore_meta(self, snap: Snapshot) -> None:
        """The calibration rate and the logit offsets."""
        meta = snap.manifest.meta
        self.neg_keep_rate = float(meta.get("neg_keep_rate", 1.0))
        self.logit_offsets = {t: float(v) for t, v in meta.get("logit_offsets", {}).items()}


class RankerModelState(CalibratedMeta, _ModelState):
    """The ranker (MMoE or shared-bottom), its ID tables, calibration rate and logit offsets."""

    kind = "ranker"
    config_type = RankerConfig
    model_type = RankingModel
    config: RankerConfig
    model: RankingModel

    def __init__(
        self, config: RankerConfig, embeddings: dict[str, EmbeddingConfig], seed: int = 0
    ) -> None:
        super().__init__(config, embeddings, seed)
        self.neg_keep_rate = 1.0
        self.logit_offsets: dict[str, float] = {}
        """Per calibrated task, a scalar added to its logit (`RankerState.recalibrate`)."""

    @torch.no_grad()
    def predict(self, cols: Columns, calibrated: bool = True) -> dict[str, np.ndarray]:
        """Per-task probabilities (calibrated for down-sampling) and "watch_ms"."""
        out = self._forward(cols)
        for t, offset in self.logit_offsets.items():
            out.logits[t] = out.logits[t] + offset
        return self.outputs(self.model.probabilities(out), out.logits[WATCH], calibrated)

    def _forward(self, cols: Columns) -> TaskOutput:
        """The model's raw output on `cols` in eval mode (its mode is restored after)."""
        with evaluating(self.model):
            return self.model(self.model.inputs(cols, observe=False))

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


class RetrieverModelState(_ModelState):
    """The two-tower retriever, its ID tables and the side info (author, category) of notes."""

    kind = "retriever"
    config_type = RetrieverConfig
    model_type = TwoTowerModel
    store_seed_offset = 100
    config: RetrieverConfig
    model: TwoTowerModel

    def __init__(
        self, config: RetrieverConfig, embeddings: dict[str, EmbeddingConfig], seed: int = 0
    ) -> None:
        super().__init__(config, embeddings, seed)
        self.side: dict[str, tuple[str, str, int, int]] = {}
        """Note -> (author, category, last seen ms, duration ms known at impression, 0 unknown)."""

    def _note_rows(self, notes: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        authors = [self.side[n][0] if n in self.side else "" for n in notes]
        cats = [self.side[n][1] if n in self.side else "" for n in notes]
        return (
            torch.from_numpy(self.store["note"].rows(notes)),
            torch.from_numpy(self.store["author"].rows(authors)),
            torch.from_numpy(self.store["category"].rows(cats)),
        )

    @torch.no_grad()
    def user_vectors(
        self, users: list[str], stats: np.ndarray, history: list[list[str]] | None = None
    ) -> np.ndarray:
        """(n, d) unit user vectors (unknown users read the default row).

        Args:
            users: user ids; stats: (n, F) raw counts.
            history: per user the recently clicked notes, newest first (None: none known).
        """
        self.model.eval()
        return self.model.encode_user(*self.user_inputs(users, stats, history)).numpy()

    def user_inputs(
        self, users: list[str], stats: np.ndarray, history: list[list[str]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """What the user tower reads (lookups only): (n,) user rows, (n, F) stat buckets and the
        history's rows and mask (None when the tower pools no history) - as a training batch
        (`RetrieverState.batch`) builds them from samples."""
        rows = torch.from_numpy(self.store["user"].rows(users))
        hist = self.model.history_tensor(history if history is not None else [[] for _ in users])
        return rows, self.model.stats_tensor(stats), hist

    @torch.no_grad()
    def item_vectors(self, notes: list[str] | None = None) -> tuple[list[str], np.ndarray]:
        """(ids, (n, d) unit vectors) of `notes` with known side info (all when None)."""
        self.model.eval()
        ids = list(self.side) if notes is None else [n for n in notes if n in self.side]
        if not ids:
            return [], np.zeros((0, self.config.out_dim), np.float32)
        return ids, self.model.encode_item(*self._note_rows(ids)).numpy()

    def restore_meta(self, snap: Snapshot) -> None:
        """The side info of the notes: the full's, updated by each delta's."""
        side = from_json_array(snap.dense.get("side.notes")) or {}
        for meta in snap.delta_metas:  # notes new since the full, oldest delta first
            side.update(meta.get("side", {}))
        self.side = {  # snapshots from before the duration hold 3 fields: unknown
            n: (v[0], v[1], int(v[2]), int(v[3]) if len(v) > 3 else 0) for n, v in side.items()
        }
