"""Samples -> model inputs: columnar batches, log-bucketised window counts, ID rows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import torch

from features.samples import LABELS, STAT_FEATURES, Sample
from features.schema import FeatureConfig
from features.windows import WINDOWS
from learners.errors import SampleInputError

F = len(STAT_FEATURES)
"""Number of window counts per entity."""
_RATE_OF = {  # rate name -> (numerator, denominator) counts, per window
    "ctr": ("clicks", "impressions"),
    "like": ("likes", "impressions"),
    "collect": ("collects", "impressions"),
    "share": ("shares", "impressions"),
    "comment": ("comments", "impressions"),
    "follow": ("follows", "impressions"),
    "hide": ("hides", "impressions"),
    "completion": ("completions", "plays"),
}
_WINDOW_NAMES = tuple(w.name for w in WINDOWS)
_RATE_INDEX = np.array(
    [
        [STAT_FEATURES.index(f"{num}_{w}"), STAT_FEATURES.index(f"{den}_{w}")]
        for w in _WINDOW_NAMES
        for num, den in _RATE_OF.values()
    ]
)  # (R, 2)
_WATCH_INDEX = np.array(
    [
        [STAT_FEATURES.index(f"watch_ms_{w}"), STAT_FEATURES.index(f"plays_{w}")]
        for w in _WINDOW_NAMES
    ]
)  # (W, 2)
R = len(_RATE_INDEX) + len(_WATCH_INDEX)
"""Number of dense rate features per entity (`rate_tensor`)."""
LABEL_COLUMNS = (*LABELS, "completion")


@dataclass(frozen=True)
class Columns:
    """A batch of samples, column by column."""

    user_id: list[str]
    note_id: list[str]
    author_id: list[str]
    category: list[str]
    ts: np.ndarray
    """(n,) int64 impression times."""
    position: np.ndarray
    """(n,) int64, -1 unknown."""
    user_stats: np.ndarray
    """(n, F) raw counts in `STAT_FEATURES` order."""
    note_stats: np.ndarray
    """(n, F) raw counts."""
    labels: dict[str, np.ndarray]
    """`LABEL_COLUMNS` -> (n,) float32 0/1."""
    watch_ms: np.ndarray
    """(n,) float32."""
    keep_rate: np.ndarray
    """(n,) float32 probability the sample survived down-sampling."""
    item_duration_ms: np.ndarray | None = None
    """(n,) float32 duration of the note as known at impression time, 0 unknown (None: all 0)."""
    history: list[list[str]] | None = None
    """Per sample, the user's last clicked notes before it, newest first (None: all empty)."""

    def __post_init__(self) -> None:
        n = len(self.user_id)
        if self.item_duration_ms is None:
            object.__setattr__(self, "item_duration_ms", np.zeros(n, dtype=np.float32))
        if self.history is None:
            object.__setattr__(self, "history", [[] for _ in range(n)])

    def __len__(self) -> int:
        return len(self.user_id)

    @classmethod
    def from_samples(cls, samples: list[Sample]) -> Columns:
        """Columns of decoded `Sample`s (a `SampleBatch.samples`)."""
        if not samples:
            raise SampleInputError("empty sample batch")
        user_stats = np.array([s.user_stats for s in samples], dtype=np.float32)
        note_stats = np.array([s.note_stats for s in samples], dtype=np.float32)
        if user_stats.shape != (len(samples), F) or note_stats.shape != (len(samples), F):
            raise SampleInputError(
                f"user_stats / note_stats must hold {F} counts (STAT_FEATURES) per sample, got "
                f"{user_stats.shape} and {note_stats.shape}"
            )
        return cls(
            user_id=[s.user_id for s in samples],
            note_id=[s.note_id for s in samples],
            author_id=[s.author_id for s in samples],
            category=[s.category for s in samples],
            ts=np.array([s.ts for s in samples], dtype=np.int64),
            position=np.array([s.position for s in samples], dtype=np.int64),
            user_stats=user_stats,
            note_stats=note_stats,
            labels={
                k: np.array([getattr(s, k) for s in samples], dtype=np.float32)
                for k in LABEL_COLUMNS
            },
            watch_ms=np.array([s.watch_ms for s in samples], dtype=np.float32),
            keep_rate=np.array([s.keep_rate for s in samples], dtype=np.float32),
            item_duration_ms=np.array([s.item_duration_ms for s in samples], dtype=np.float32),
            history=[s.history for s in samples],
        )

    @classmethod
    def from_table(cls, table: pa.Table) -> Columns:
        """Columns of a parquet sample log (`features.samples.read_sample_log`)."""
        if table.num_rows == 0:
            raise SampleInputError("the sample log is empty: run `streamrec run samples` first")

        def stats(name: str) -> np.ndarray:
            col = table.column(name).combine_chunks()
            flat = col.values.to_numpy().astype(np.float32)
            if flat.size != table.num_rows * F:
                raise SampleInputError(f"{name} must hold {F} counts (STAT_FEATURES) per row")
            return flat.reshape(table.num_rows, F)

        def strings(name: str) -> list[str]:
            return table.column(name).to_pylist()

        def num(name: str, dtype: type) -> np.ndarray:
            return table.column(name).to_numpy().astype(dtype)

        return cls(
            user_id=strings("user_id"),
            note_id=strings("note_id"),
            author_id=strings("author_id"),
            category=strings("category"),
            ts=num("ts", np.int64),
            position=num("position", np.int64),
            user_stats=stats("user_stats"),
            note_stats=stats("note_stats"),
            labels={k: num(k, np.float32) for k in LABEL_COLUMNS},
            watch_ms=num("watch_ms", np.float32),
            keep_rate=num("keep_rate", np.float32),
            item_duration_ms=num("item_duration_ms", np.float32),
            history=table.column("history").to_pylist(),
        )

    def to_samples(self, sample_ids: list[str], duration_ms: int = 0) -> list[Sample]:
        """The rows as `Sample`s (the inverse of `from_samples`): ids `sample_ids`, no request
        ids, every duration `duration_ms`."""
        labels = self.labels
        return [
            Sample(
                sample_id=sample_ids[j],
                ts=int(self.ts[j]),
                user_id=self.user_id[j],
                note_id=self.note_id[j],
                author_id=self.author_id[j],
                category=self.category[j],
                request_id="",
                position=int(self.position[j]),
                click=int(labels["click"][j]),
                like=int(labels["like"][j]),
                collect=int(labels["collect"][j]),
                share=int(labels["share"][j]),
                comment=int(labels["comment"][j]),
                follow=int(labels["follow"][j]),
                watch_ms=int(self.watch_ms[j]),
                duration_ms=duration_ms,
                completion=int(labels["completion"][j]),
                keep_rate=float(self.keep_rate[j]),
                user_stats=self.user_stats[j].astype(np.int64).tolist(),
                note_stats=self.note_stats[j].astype(np.int64).tolist(),
                item_duration_ms=int(self.item_duration_ms[j]),
                history=list(self.history[j]),
            )
            for j in range(len(self))
        ]

    def take(self, index: np.ndarray) -> Columns:
        """The rows at `index`, in that order."""
        idx = index.tolist()
        return Columns(
            user_id=[self.user_id[i] for i in idx],
            note_id=[self.note_id[i] for i in idx],
            author_id=[self.author_id[i] for i in idx],
            category=[self.category[i] for i in idx],
            ts=self.ts[index],
            position=self.position[index],
            user_stats=self.user_stats[index],
            note_stats=self.note_stats[index],
            labels={k: v[index] for k, v in self.labels.items()},
            watch_ms=self.watch_ms[index],
            keep_rate=self.keep_rate[index],
            item_duration_ms=self.item_duration_ms[index],
            history=[self.history[i] for i in idx],
        )

    def batches(self, size: int) -> list[Columns]:
        """Consecutive slices of at most `size` rows."""
        return [
            self.take(np.arange(lo, min(lo + size, len(self)))) for lo in range(0, len(self), size)
        ]

    @staticmethod
    def concat(parts: list[Columns]) -> Columns:
        """One batch of several."""
        if len(parts) == 1:
            return parts[0]
        return Columns(
            user_id=[x for p in parts for x in p.user_id],
            note_id=[x for p in parts for x in p.note_id],
            author_id=[x for p in parts for x in p.author_id],
            category=[x for p in parts for x in p.category],
            ts=np.concatenate([p.ts for p in parts]),
            position=np.concatenate([p.position for p in parts]),
            user_stats=np.concatenate([p.user_stats for p in parts]),
            note_stats=np.concatenate([p.note_stats for p in parts]),
            labels={k: np.concatenate([p.labels[k] for p in parts]) for k in parts[0].labels},
            watch_ms=np.concatenate([p.watch_ms for p in parts]),
            keep_rate=np.concatenate([p.keep_rate for p in parts]),
            item_duration_ms=np.concatenate([p.item_duration_ms for p in parts]),
            history=[h for p in parts for h in p.history],
        )


def log_buckets(counts: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket b of a count x >= 0: floor(log2(1 + x)), capped at `buckets - 1`; int64, same shape.

    Negative or non-finite counts (missing features) land in bucket 0, like a zero.
    """
    x = np.nan_to_num(np.asarray(counts, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    b = np.floor(np.log2(1.0 + np.maximum(x, 0.0)))
    return np.minimum(b, buckets - 1).astype(np.int64)


def stat_tensor(counts: np.ndarray, buckets: int) -> torch.Tensor:
    """(n, F) raw counts -> (n, F) int64 indices into a (F x buckets) bucket embedding."""
    if counts.ndim != 2 or counts.shape[1] != F:
        raise SampleInputError(
            f"statistics must be (n, {F}) counts in STAT_FEATURES order, got shape {counts.shape}"
        )
    offsets = np.arange(F, dtype=np.int64) * buckets  # (F,)
    return torch.from_numpy(log_buckets(counts, buckets) + offsets)  # (n, F)


@lru_cache(maxsize=8)
def _prior_rates(priors: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """(R0,) prior of every window rate of `rate_tensor` and its log-odds."""
    by_rate = {"ctr": priors.ctr_prior, "completion": priors.completion_prior}
    rates = np.array(
        [by_rate.get(name, priors.engagement_prior) for _ in _WINDOW_NAMES for name in _RATE_OF]
    )  # (R0,)
    rates.setflags(write=False)
    logits = np.log(rates / (1 - rates))
    logits.setflags(write=False)
    return rates, logits


def rate_tensor(counts: np.ndarray, strength: float, priors: FeatureConfig) -> torch.Tensor:
    """(n, F) raw counts -> (n, R) float32 rates per window, as the MLP's numeric inputs.

    Log-bucketised counts alone give the ratio of two counts only to a factor of 2, and a
    click-through rate is a stronger signal than either count. The rates (clicks, likes, ...
    per impression, completions per play) are smoothed towards the feature store's priors
    (`priors`: its ctr, engagement and completion priors, `RankerConfig.priors`) with
    `strength` pseudo-counts (not `priors.prior_strength`: see `RankerConfig.rate_prior_strength`)
    and fed as log-odds relative to the prior's (an entity without history gives 0, so the
    inputs are centred); the mean watch time per play as log1p(minutes).
    """
    prior, prior_logit = _prior_rates(priors)
    x = np.nan_to_num(np.asarray(counts, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    x = np.maximum(x, 0.0)
    num, den = x[:, _RATE_INDEX[:, 0]], x[:, _RATE_INDEX[:, 1]]  # (n, R0)
    rate = (num + prior * strength) / (den + strength)
    rate = np.clip(rate, 1e-4, 1 - 1e-4)
    watch = x[:, _WATCH_INDEX[:, 0]] / (x[:, _WATCH_INDEX[:, 1]] + 1.0) / 60_000.0  # (n, W)
    logit = np.log(rate / (1 - rate)) - prior_logit  # 0 at the prior
    out = np.concatenate([logit, np.log1p(watch)], axis=1)  # (n, R)
    return torch.from_numpy(out.astype(np.float32))


def position_tensor(position: np.ndarray, positions: int) -> torch.Tensor:
    """(n,) positions -> (n,) buckets; -1 (unknown) -> bucket `positions`."""
    p = np.asarray(position, dtype=np.int64)
    return torch.from_numpy(np.where(p < 0, positions, np.minimum(p, positions - 1)))


def history_rows(
    rows_of: Callable[[list[str]], np.ndarray], history: list[list[str]], length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample the first `length` notes of its history as table rows (lookups only: a note
    in a history is not a sighting).

    Args:
        rows_of: the note table's `rows` (unknown notes -> the default row 0).
        history: per sample, notes newest first.

    Returns:
        (B, length) int64 rows (0 where padded) and (B, length) bool mask (True = a note).
    """
    b = len(history)
    mask = np.zeros((b, length), dtype=bool)
    flat: list[str] = []
    for i, h in enumerate(history):
        h = h[:length]
        mask[i, : len(h)] = True
        flat.extend(h)
    rows = np.zeros((b, length), dtype=np.int64)
    if flat:
        rows[mask] = rows_of(flat)
    return torch.from_numpy(rows), torch.from_numpy(mask)


def duration_tensor(duration_ms: np.ndarray, buckets: int) -> torch.Tensor:
    """(n,) durations in ms -> (n,) buckets: 0 unknown (<= 0), else 1 + floor(log2(1 + seconds)),
    capped at `buckets - 1`."""
    seconds = np.maximum(np.nan_to_num(np.asarray(duration_ms, np.float64)), 0.0) / 1000.0
    b = 1 + np.floor(np.log2(1.0 + seconds)).astype(np.int64)
    return torch.from_numpy(np.where(seconds > 0, np.minimum(b, buckets - 1), 0))
