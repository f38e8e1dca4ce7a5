"""Serving-side models rebuilt from snapshots: `Ranker.score` and `Retriever` vectors.

Built on `learners.models` only: importing this module never loads the training code
(`learners.training`, `learners.full`, `learners.online`; an import-linter contract holds it).
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

import numpy as np
import torch

from learners.errors import SampleInputError
from learners.inputs import Columns, F
from learners.models import ITEM_TABLE, RankerModelState, RetrieverModelState, from_json_array
from learners.snapshots import Snapshot


def _stats(a: np.ndarray, n: int, what: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.shape != (n, F):
        raise SampleInputError(
            f"{what} must be raw counts of shape ({n}, {F}) in STAT_FEATURES order, got {a.shape}"
        )
    return a


class _Published:
    """A model as a snapshot published it: the rebuild and the version in use."""

    state_type: ClassVar[type[RankerModelState] | type[RetrieverModelState]]

    def __init__(self, state: Any, snap: Snapshot) -> None:
        self._state = state
        self._snap = snap

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> Self:
        """Rebuild the model from a snapshot of its kind (full + deltas)."""
        return cls(cls.state_type.from_snapshot(snap), snap)

    @property
    def version(self) -> int:
        """Snapshot version in use."""
        return self._snap.manifest.version


class _Scorer(_Published):
    """A published multi-task model scoring notes (the ranker, the pre-ranker), in eval mode."""

    def __init__(self, state: Any, snap: Snapshot) -> None:
        super().__init__(state, snap)
        state.model.eval()

    @property
    def tasks(self) -> tuple[str, ...]:
        """Task probabilities `score` returns (plus "watch_ms")."""
        return self._state.config.tasks


class Ranker(_Scorer):
    """Scores candidate notes for one user with the published ranker (calibrated)."""

    state_type = RankerModelState

    def apply_delta(self, snap: Snapshot) -> None:
        """Move to a newer snapshot (only ID tables are reloaded if the base full is the same)."""
        if snap.versions[:1] == self._snap.versions[:1]:
            self._state.store.load(snap.tables, snap.dense, snap.manifest.hwm_ms)
            self._state.restore_meta(snap)  # the online learner refits the logit offsets
        else:
            self._state = RankerModelState.from_snapshot(snap)
            self._state.model.eval()
        self._snap = snap

    @property
    def history_len(self) -> int:
        """Clicked notes of the user the model reads (0: it reads no history)."""
        return self._state.config.history

    def score(
        self,
        user_id: str,
        note_ids: list[str],
        author_ids: list[str],
        categories: list[str],
        user_stats: np.ndarray,
        note_stats: np.ndarray,
        positions: np.ndarray | None = None,
        durations: np.ndarray | None = None,
        history: list[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Calibrated per-task probabilities (n,) of each note, and "watch_ms" (expected watch).

        Args:
            user_stats: (F,) raw counts of the user in `STAT_FEATURES` order.
            note_stats: (n, F) raw counts of each note.
            positions: (n,) display positions, default unknown (-1).
            durations: (n,) note durations in ms as impressions carry them
                (`Retriever.durations`), default unknown (0).
            history: the user's last clicked notes, newest first, as the sample joiner keeps
                them (`FeatureClient.history`, `Sample.history`); default none.
        """
        n = len(note_ids)
        if len(author_ids) != n or len(categories) != n:
            raise SampleInputError(
                f"{n} note_ids but {len(author_ids)} author_ids and {len(categories)} categories"
            )
        if n == 0:
            return {t: np.zeros(0) for t in (*self.tasks, "watch_ms")}
        cols = self.columns(
            user_id, note_ids, author_ids, categories, user_stats, note_stats, positions,
            durations, history,
        )  # fmt: skip
        return self._state.predict(cols)

    @staticmethod
    def columns(
        user_id: str,
        note_ids: list[str],
        author_ids: list[str],
        categories: list[str],
        user_stats: np.ndarray,
        note_stats: np.ndarray,
        positions: np.ndarray | None = None,
        durations: np.ndarray | None = None,
        history: list[str] | None = None,
    ) -> Columns:
        """The batch `score` feeds the model: one row per note, the user's inputs repeated, laid
        out as a training batch of the same impressions (`Columns.from_samples`) is."""
        n = len(note_ids)
        users = _stats(np.asarray(user_stats).reshape(1, -1), 1, "user_stats")
        return Columns(
            user_id=[user_id] * n,
            note_id=list(note_ids),
            author_id=list(author_ids),
            category=list(categories),
            ts=np.zeros(n, dtype=np.int64),
            position=np.full(n, -1) if positions is None else np.asarray(positions, np.int64),
            user_stats=np.repeat(users, n, axis=0),
            note_stats=_stats(note_stats, n, "note_stats"),
            labels={},
            watch_ms=np.zeros(n, np.float32),
            keep_rate=np.ones(n, np.float32),
            item_duration_ms=None if durations is None else np.asarray(durations, np.float32),
            history=[list(history or [])] * n,
        )


class Retriever(_Published):
    """User and item vectors of the published two-tower retriever (cosine = dot product)."""

    state_type = RetrieverModelState

    def __init__(self, state: RetrieverModelState, snap: Snapshot) -> None:
        super().__init__(state, snap)
        items = snap.tables.get(ITEM_TABLE)
        self._item_ids = list(items.ids) if items is not None else []
        self._items = (
            items.weights if items is not None else np.zeros((0, state.config.out_dim), np.float32)
        )
        self._item_index = {n: j for j, n in enumerate(self._item_ids)}
        self._clicks: dict[str, float] | None = None

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._state.config.out_dim

    @property
    def history_len(self) -> int:
        """Clicked notes of the user the user tower pools (0: it reads no history)."""
        return self._state.config.history

    def user_vector(
        self, user_id: str, user_stats: np.ndarray, history: list[str] | None = None
    ) -> np.ndarray:
        """(d,) unit vector of the user.

        Args:
            user_stats: (F,) raw counts in STAT_FEATURES order.
            history: the user's last clicked notes, newest first (`FeatureClient.history`,
                as `Sample.history`); default none.
        """
        stats = _stats(np.asarray(user_stats).reshape(1, -1), 1, "user_stats")
        return self._state.user_vectors([user_id], stats, [list(history or [])])[0]

    def user_inputs(
        self, user_id: str, user_stats: np.ndarray, history: list[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The tensors `user_vector` feeds the user tower: (1,) user row, (1, F) stat buckets,
        (1, N) history rows and mask (None when the tower reads no history)."""
        stats = _stats(np.asarray(user_stats).reshape(1, -1), 1, "user_stats")
        return self._state.user_inputs([user_id], stats, [list(history or [])])

    def item_vectors(self, note_ids: list[str] | None = None) -> tuple[list[str], np.ndarray]:
        """(ids, (n, d) unit vectors) of the published notes among `note_ids` (all when None).

        Notes the snapshot does not know are left out of the answer.
        """
        if note_ids is None:
            return list(self._item_ids), self._items
        idx = [self._item_index[n] for n in note_ids if n in self._item_index]
        return [self._item_ids[j] for j in idx], self._items[idx]

    def side_info(self, note_ids: list[str]) -> tuple[list[str], list[str]]:
        """(author_ids, categories) of the notes ("" where the snapshot does not know one)."""
        side = self._state.side
        unknown = ("", "", 0, 0)
        rows = [side.get(n, unknown) for n in note_ids]
        return [r[0] for r in rows], [r[1] for r in rows]

    def note_clicks(self) -> dict[str, float]:
        """Clicked samples per note the retriever counted up to its full snapshot (the negative
        sampler's counts, within the TTL; notes new since the full are absent): a popularity
        that changes with each full, not with deltas."""
        if self._clicks is None:
            raw = from_json_array(self._snap.dense.get("side.clicks")) or {}
            self._clicks = {n: float(c) for n, c in raw.items()}
        return self._clicks

    def durations(self, note_ids: list[str]) -> np.ndarray:
        """(n,) durations in ms the notes' impressions carried (0 where unknown)."""
        side = self._state.side
        return np.array([side[n][3] if n in side else 0 for n in note_ids], dtype=np.float32)

    @property
    def hwm_ms(self) -> int:
        """Event-time high-water mark of the snapshot in use."""
        return self._snap.manifest.hwm_ms
