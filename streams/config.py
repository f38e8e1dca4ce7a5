"""Job settings of the streaming flows (pure pydantic, cheap to import at entry points)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


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
    max_bytes: int = Field(default=16_384, ge=256)
    """Payload size limit of the decoder."""


class ExposureConfig(BaseModel):
    """Settings of the exposure job: time-sliced per-user Bloom filters in Redis."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    namespace: str = Field(default="exposure", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    """Redis key prefix of the filters, their sizing and the job's event-time high-water mark."""
    retention_ms: int = Field(default=30 * 86_400_000, gt=0)
    """How long an impression is remembered, in event time (a whole number of slices)."""
    slice_ms: int = Field(default=86_400_000, gt=0)
    """Event-time length of one slice (one Bloom filter per user per slice)."""
    expected_items: int = Field(default=3_000, ge=1)
    """Design load: impressions per user per retention window the filters are sized for."""
    fp_rate: float = Field(default=0.01, gt=0, lt=0.5)
    """Target false-positive rate of a query over all live slices at the design load."""
    gc_slack_ms: int = Field(default=2 * 86_400_000, ge=0)
    """Redis TTL slack: a slice key lives this long (wall clock) after it can last be read."""
    max_segments: int = Field(default=8, ge=1, le=1_024)
    """A user's slice that fills past its design load grows by another filter segment, up to
    this many (a scalable Bloom filter: the false-positive rate of a heavy day stays bounded)."""
    keys_per_call: int = Field(default=2_000, ge=1)
    """Most slice keys one Lua call updates, bounding how long Redis is busy."""

    @model_validator(mode="after")
    def _whole_slices(self) -> ExposureConfig:
        if self.retention_ms % self.slice_ms:
            raise ValueError(
                f"retention_ms ({self.retention_ms}) must be a whole number of slice_ms "
                f"({self.slice_ms})"
            )
        return self

    @property
    def slices(self) -> int:
        """Number of live slices a query reads."""
        return self.retention_ms // self.slice_ms


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
    log_dir: Path = Path(".streamrec/training-samples")
    """Directory of the parquet log (one row per sample) read by full training."""
    log_rows_per_part: int = Field(default=20_000, ge=1)
    """A parquet part file is written once this many samples are buffered."""
    log_part_interval_s: float = Field(default=60.0, gt=0)
    """... or once the oldest buffered sample waited this long (checked as samples arrive)."""
    max_bytes: int = Field(default=16_384, ge=256)
    """Payload size limit of the decoder."""
