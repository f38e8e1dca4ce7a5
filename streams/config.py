"""Job settings of the streaming flows (pure pydantic, cheap to import at entry points)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class EventLimits(BaseModel):
    """Limits every job applies when decoding events (one payload limit for all)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_bytes: int = Field(default=16_384, ge=256)
    """Payloads longer than this go to the dead-letter topic as `oversized`."""
    max_future_ms: int = Field(default=300_000, ge=0)
    """An event whose time is more than this ahead of the wall clock goes to the dead-letter
    topic as `future`: no clock may be moved past now by one record."""
    max_skip_ms: int = Field(default=86_400_000, gt=0)
    """An event more than this ahead of its partition's event-time high-water mark (or any event
    before the partition has one) is held: it moves the clock only once `confirm_events` held
    events lie within this span of each other."""
    confirm_events: int = Field(default=3, ge=1)
    """Held events that must agree before the partition's clock jumps to them."""
    outlier_after: int = Field(default=1_000, ge=1)
    """A held event is dead-lettered as `outlier` once this many events arrived on the old clock
    without confirming it (and at the end of a bounded run)."""
    dedupe_ids: int = Field(default=200_000, ge=0)
    """Most event ids a partition remembers (within its allowed lateness) to drop duplicates."""


DEFAULT_LIMITS = EventLimits()
"""The decoding limits a flow built without explicit limits applies."""


class StatsConfig(BaseModel):
    """Settings of the stats job."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    allowed_lateness_ms: int = Field(default=600_000, ge=0)
    """An event older than its partition's event-time high-water mark minus this is `late`."""
    shards: int = Field(default=8, ge=1, le=1024)
    """State shards per entity kind; fixed for the life of a recovery store."""
    flush_interval_ms: int = Field(default=200, ge=1)
    """Least wall-clock interval between two writes of a shard's changed entities (updates of
    an entity in between coalesce); it grows to twice the recent write time when Redis lags."""


class SamplesConfig(BaseModel):
    """Settings of the sample joiner (`streamrec run samples`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    attribution_window_ms: int = Field(default=1_800_000, ge=1)
    """An action is attached to an impression if its event time is in [ts, ts + this]."""
    allowed_lateness_ms: int = Field(default=60_000, ge=0)
    """Out-of-orderness tolerated: an event older than its partition's high-water mark minus
    this is `late`; the flow's watermark is the least partition high-water mark minus this."""
    negative_keep_rate: float = Field(default=0.25, gt=0, le=1)
    """Probability a with which a negative (unclicked) sample is kept."""
    shards: int = Field(default=8, ge=1, le=1024)
    """State shards per side (user, note); fixed for the life of a recovery store."""
    batch_size: int = Field(default=512, ge=1)
    """Most samples per message on `training-samples`."""
    batch_max_delay_ms: int = Field(default=1_000, ge=1)
    """Wall-clock time after which a partly filled micro-batch is sent anyway."""
    idle_partition_ms: int = Field(default=30_000, ge=1)
    """A Kafka partition silent for this long (wall clock) stops holding the watermark back."""
    dedupe_horizon_ms: int = Field(default=1_800_000, ge=0)
    """Event ids are remembered this long (event time) after they became final, to drop
    duplicates."""
    history_len: int = Field(default=20, ge=0, le=200)
    """Most recently clicked notes of the user carried in each sample (`Sample.history`,
    newest first; 0: none). Changing it changes the samples, not the recovery state's format."""
    log_rows_per_part: int = Field(default=20_000, ge=1)
    """A parquet part file is written once this many samples are buffered."""
    log_part_interval_s: float = Field(default=60.0, gt=0)
    """... or once the oldest buffered sample waited this long (checked as samples arrive)."""


class MetricsConfig(BaseModel):
    """The Prometheus endpoint of every stream job process (`streams.metrics`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    port: int = Field(default=0, ge=0, le=65_535)
    """Base port of the jobs' `/metrics` endpoints; 0: no endpoint. A job of `--processes N`
    serves process i at `port + i`; `streamrec run <job> --metrics-port P` overrides it, so
    jobs that run at the same time on one host each need their own range."""
    host: str = "127.0.0.1"
    """Address the endpoints listen on (`0.0.0.0` for a Prometheus on another host)."""


class CoClickConfig(BaseModel):
    """Settings of the co-click job (`streamrec run itemcf`): ItemCF and Swing neighbours,
    author and fresh-note indexes for the retrieval channels (`streams.itemcf`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    top_k: int = Field(default=200, ge=1, le=1_000)
    """Neighbours stored per note and kind."""
    user_window: int = Field(default=50, ge=2, le=1_000)
    """Distinct notes per user the similarities count: the user's last clicked ones (a click on
    a note already kept only refreshes its recency)."""
    alpha: float = Field(default=1.0, gt=0)
    """Swing's overlap penalty: a pair of users adds 1 / (alpha + |notes both clicked|)."""
    swing: bool = True
    """Compute Swing besides ItemCF."""
    swing_users: int = Field(default=100, ge=2)
    """Swing sums over the pairs of a note's this many most recent clickers (its cost grows
    with their square)."""
    refresh_s: float = Field(default=1.0, ge=0)
    """Least wall-clock interval between two recomputations of the changed notes' neighbour
    lists (the clicks in between coalesce; the end of a bounded input recomputes at once); it
    grows to twice the last recomputation's time when that is longer (the input keeps up)."""
    fresh_ms: int = Field(default=86_400_000, gt=0)
    """A note first seen less than this (event time) before the job's high-water mark is fresh
    (until `trust_impressions`)."""
    trust_impressions: int = Field(default=100, ge=1)
    """Impressions after which a note's statistics are trusted: it leaves the fresh set."""
    per_author: int = Field(default=20, ge=1)
    """Newest notes kept per author."""


class ExperimentFlowConfig(BaseModel):
    """Settings of the experiments job (`streamrec run experiments`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    allowed_lateness_ms: int = Field(default=3_600_000, ge=0)
    """Out-of-orderness tolerated: an older event is `late`; a day closes (its cells final) once
    the partition's high-water mark passed its end by this much."""
    flush_interval_s: float = Field(default=10.0, gt=0)
    """Least wall-clock interval between two writes of a partition's changed cells."""
    inherit_arms: bool = True
    """An event without arms counts for the arms of its user's last event with arms (False:
    only events that carry arms count, e.g. when other traffic shares the topic)."""
