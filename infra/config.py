"""Typed settings for the stack and the jobs; files and environment are read by `load_settings`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.exposure import ExposureConfig
from features.paths import DATA_DIR_ENV, DataPaths, default_data_dir
from features.schema import FeatureConfig
from infra.errors import ConfigError
from learners.config import LearnConfig
from learners.snapshots import SnapshotConfig
from serving.config import ServingConfig
from streams.config import (
    CoClickConfig,
    EventLimits,
    ExperimentFlowConfig,
    MetricsConfig,
    SamplesConfig,
    StatsConfig,
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class TopicsConfig(_Frozen):
    """Names and partition counts of the Kafka topics."""

    interactions: str = "interactions"
    """Input events, keyed by user_id."""
    dlq: str = "interactions.dlq"
    """Dead letters: events that failed validation, with their reason."""
    training_samples: str = "training-samples"
    """Joined, labelled samples for the online learner."""
    embedding_snapshots: str = "embedding-snapshots"
    """Announcements of published embedding snapshot versions."""
    partitions: int = Field(default=4, ge=1, le=256)
    """Partition count used when the stack creates a topic."""

    def all_names(self) -> list[str]:
        """Return every topic name, in a fixed order."""
        return [self.interactions, self.dlq, self.training_samples, self.embedding_snapshots]


class KafkaConfig(_Frozen):
    """Where the broker is and how clients talk to it."""

    bootstrap: str | None = None
    """host:port of a broker to use; None means the local stack starts (or has started) one."""
    topics: TopicsConfig = TopicsConfig()
    """Topic names and partition counts."""


class RedisConfig(_Frozen):
    """Where Redis is."""

    url: str | None = None
    """redis:// URL to use; None means 127.0.0.1:6379 if it answers, else a started one."""


class StackConfig(_Frozen):
    """Settings of the local stack started by `streamrec infra up`."""

    default_redis: str = "redis://127.0.0.1:6379/0"
    """The Redis probed when no URL is configured."""
    startup_timeout_s: float = Field(default=30.0, gt=0)
    """How long to wait for a started service to answer."""


class Settings(_Frozen):
    """Everything a streamrec process is configured with; each value is defined here once.

    Every file location derives from `data_dir` (`paths`); where a part has its own directory
    setting (`snapshots.root`), its default is taken under `data_dir` too.
    """

    data_dir: Path = Field(default_factory=lambda: default_data_dir({}))
    """Where streamrec keeps its files (`features.paths` lists the layout); made absolute."""

    kafka: KafkaConfig = KafkaConfig()
    """Broker and topics."""
    redis: RedisConfig = RedisConfig()
    """Redis location."""
    stack: StackConfig = StackConfig()
    """Local stack settings."""
    events: EventLimits = EventLimits()
    """Event decoding limits."""
    stats: StatsConfig = StatsConfig()
    """The stats job."""
    exposure: ExposureConfig = ExposureConfig()
    """The exposure job and the filters it keeps."""
    samples: SamplesConfig = SamplesConfig()
    """The sample joiner."""
    coclick: CoClickConfig = CoClickConfig()
    """The co-click job (`streamrec run itemcf`): ItemCF, Swing, author and fresh indexes."""
    experiments: ExperimentFlowConfig = ExperimentFlowConfig()
    """The experiments job (per-arm counts for `streamrec experiments report`); the
    experiments themselves are `serving.experiments` (a YAML file)."""
    metrics: MetricsConfig = MetricsConfig()
    """The stream jobs' Prometheus endpoints (off unless a port is set)."""
    snapshots: SnapshotConfig
    """Embedding snapshots: root directory, retention, publishing intervals."""
    learn: LearnConfig = LearnConfig()
    """The online learner and full training."""
    serving: ServingConfig = ServingConfig()
    """Retrieval, ranking and the API."""
    features: FeatureConfig = FeatureConfig()
    """Priors of the smoothed rates: the stats job derives features with them, the learners
    use the same."""
    feast_project: str = "streamrec"
    """Feast project whose online store the jobs write."""

    @model_validator(mode="before")
    @classmethod
    def _derive_paths(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        root = Path(data.get("data_dir") or default_data_dir({})).expanduser().resolve()
        data["data_dir"] = root
        snapshots = data.get("snapshots")
        if snapshots is None or (isinstance(snapshots, dict) and "root" not in snapshots):
            data["snapshots"] = {**(snapshots or {}), "root": DataPaths(root).snapshots}
        return data

    @property
    def paths(self) -> DataPaths:
        """Every file location, derived from `data_dir`."""
        return DataPaths(self.data_dir)


def load_settings(path: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read settings from a YAML file and the environment (entry points only).

    Args:
        path: YAML file; defaults to `$STREAMREC_CONFIG` if set, else built-in defaults.
        env: environment to read (`KAFKA_BOOTSTRAP`, `REDIS_URL`, `STREAMREC_DATA_DIR`).

    Returns:
        The validated settings; environment values override the file.
    """
    env = dict(os.environ) if env is None else env
    path = path or (Path(env["STREAMREC_CONFIG"]) if env.get("STREAMREC_CONFIG") else None)
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if env.get("KAFKA_BOOTSTRAP"):
        data.setdefault("kafka", {})["bootstrap"] = env["KAFKA_BOOTSTRAP"]
    if env.get("REDIS_URL"):
        data.setdefault("redis", {})["url"] = env["REDIS_URL"]
    if env.get(DATA_DIR_ENV) or "data_dir" not in data:
        data["data_dir"] = default_data_dir(env)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings{f' in {path}' if path else ''}: {exc}") from exc
