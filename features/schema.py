"""The feature names of every view, and the derived features computed from window counts.

Single source of truth: `definitions.py` builds the Feast schema from `feature_types`, the stats
job computes `derive` and the online writer writes exactly these columns.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from features.errors import UnknownViewError
from features.windows import METRICS, WINDOWS

VIEWS = ("user_stats", "note_stats")
ENTITY_KEY = {"user_stats": "user_id", "note_stats": "note_id"}
COUNTS = tuple(m for m in METRICS if m != "expected_completions_milli")
RATES = ("like", "collect", "share", "comment", "follow", "hide")


class FeatureConfig(BaseModel):
    """Priors of the smoothed (Bayesian) rates."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    prior_strength: float = Field(default=20.0, gt=0)
    """Pseudo-impressions (or pseudo-plays) behind every prior."""
    ctr_prior: float = Field(default=0.1, gt=0, lt=1)
    """Prior click-through rate (clicks per impression)."""
    engagement_prior: float = Field(default=0.02, gt=0, lt=1)
    """Prior of like/collect/share/comment/follow/hide per impression."""
    completion_prior: float = Field(default=0.3, gt=0, lt=1)
    """Prior completion rate (completions per play)."""


def derived_names(view: str) -> tuple[str, ...]:
    """Names (without window) of the derived Float64 features of a view."""
    base = ("ctr", *(f"{r}_rate" for r in RATES), "avg_watch_ms", "completion_rate")
    return (*base, "completion_rate_adj") if view == "note_stats" else base


def feature_types(view: str) -> dict[str, str]:
    """Every feature of `view` -> "int64" or "float64", in write order."""
    if view not in VIEWS:
        raise UnknownViewError(f"unknown feature view {view!r}; expected one of {VIEWS}")
    out: dict[str, str] = {}
    for w in WINDOWS:
        out.update({f"{m}_{w.name}": "int64" for m in COUNTS})
        out.update({f"{d}_{w.name}": "float64" for d in derived_names(view)})
    return out


def _smoothed(hits: np.ndarray, trials: np.ndarray, prior: float, strength: float) -> np.ndarray:
    return (hits + prior * strength) / (trials + strength)


def derive(
    view: str, counts: dict[str, np.ndarray], config: FeatureConfig
) -> dict[str, np.ndarray]:
    """Return every feature column of `view` for R entities.

    Args:
        counts: window name -> (R, len(METRICS)) int64 counts (`streams.tiles.METRICS` order).

    Rates are smoothed towards their priors: (hits + prior k) / (trials + k), k =
    `prior_strength`; engagement rates are per impression; `completion_rate` is per play;
    `completion_rate_adj` (notes) is (completions + k) / (expected completions + k), where the
    expectation sums each play's duration baseline (`streams.tiles.expected_completion_milli`):
    above 1, the note is completed more than notes of its length usually are.
    """
    index = {m: i for i, m in enumerate(METRICS)}
    k = config.prior_strength
    out: dict[str, np.ndarray] = {}
    for w in WINDOWS:
        c = counts[w.name]  # (R, M)
        col = {m: c[:, index[m]] for m in METRICS}
        for m in COUNTS:
            out[f"{m}_{w.name}"] = col[m].astype(np.int64)
        imps = col["impressions"].astype(np.float64)
        plays = col["plays"].astype(np.float64)
        out[f"ctr_{w.name}"] = _smoothed(col["clicks"], imps, config.ctr_prior, k)
        for r in RATES:
            out[f"{r}_rate_{w.name}"] = _smoothed(col[f"{r}s"], imps, config.engagement_prior, k)
        out[f"avg_watch_ms_{w.name}"] = np.divide(
            col["watch_ms"], plays, out=np.zeros(len(plays)), where=plays > 0
        )
        out[f"completion_rate_{w.name}"] = _smoothed(
            col["completions"], plays, config.completion_prior, k
        )
        if view == "note_stats":
            expected = col["expected_completions_milli"] / 1000.0
            out[f"completion_rate_adj_{w.name}"] = (col["completions"] + k) / (expected + k)
    return {name: out[name] for name in feature_types(view)}
