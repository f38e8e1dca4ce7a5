"""Settings of `streamrec serve`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FusionConfig(BaseModel):
    """How per-task predictions become one ranking score."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    formula: Literal["weighted_sum", "product", "rank"] = "weighted_sum"
    """weighted_sum: sum w_t p_t; product: prod (1 + p_t)^w_t; rank: sum w_t / (k + rank_t)."""
    weights: dict[str, float] = {
        "click": 1.0,
        "like": 2.0,
        "collect": 2.0,
        "share": 3.0,
        "comment": 3.0,
        "follow": 4.0,
        "completion": 1.0,
        "watch": 0.5,
    }
    """Weight per task ("watch" is expected watch time in minutes, squashed to w/(1+w))."""
    rank_k: float = Field(default=60.0, gt=0)
    """k of the rank formula (reciprocal rank fusion)."""
    duration_adjusted_completion: bool = True
    """Completion counts as p(completion) x duration-bias correction: long notes complete less,
    so the probability is divided by the note's completion prior (from its window counts)."""


class ServingConfig(BaseModel):
    """Retrieval, ranking and API settings."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    retrieve_k: int = Field(default=1_000, ge=1, le=10_000)
    """Candidates taken from the retrieval index."""
    rank_k: int = Field(default=200, ge=1, le=5_000)
    """Unseen candidates scored by the ranker."""
    default_n: int = Field(default=20, ge=1)
    """Notes returned when the request gives no `n`."""
    max_n: int = Field(default=200, ge=1)
    """Largest `n` a request may ask for."""
    index: Literal["flat", "ivf", "hnsw"] = "flat"
    """faiss index: "flat" exact inner product (deltas applied without a rebuild), "ivf"
    IVF-Flat (deltas without a rebuild, quantizer retrained on fulls) or "hnsw" (rebuilt per
    version); chosen by bench/serving.py (docs/serving.md)."""
    nprobe: int = Field(default=64, ge=1)
    """Inverted lists searched per query by the "ivf" index."""
    ef_search: int = Field(default=128, ge=1)
    """Candidate list size of "hnsw" searches."""
    exposure_namespace: str | None = None
    """Exposure-filter namespace to read; None reads the exposure job's (`exposure.namespace`)."""
    redis_timeout_s: float = Field(default=0.1, gt=0)
    """Connect and read timeout of every Redis call: a hung Redis costs a request at most this
    per call (a request makes three), never a hang."""
    max_in_flight: int = Field(default=32, ge=1)
    """Requests served at once; more are refused at once with 503 and `Retry-After: 1`."""
    poll_interval_s: float = Field(default=1.0, gt=0)
    """Snapshot directory check interval (announcements on Kafka wake it earlier)."""
    fusion: FusionConfig = FusionConfig()
    """Score fusion."""
