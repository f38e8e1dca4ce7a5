"""Job settings of the streaming flows (pure pydantic, cheap to import at entry points)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


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
