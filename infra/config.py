"""Typed settings for the stack and the jobs; files and environment are read by `load_settings`."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from features.exposure import ExposureConfig
from infra.errors import ConfigError
from learners.config import LearnConfig
from learners.snapshots import SnapshotConfig
from serving.config import ServingConfig
from streams.config import SamplesConfig, StatsConfig


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

    state_dir: Path = Path(".streamrec")
    """Directory holding the stack's state file, logs and pid files."""
    default_redis: str = "redis://127.0.0.1:6379/0"
    """The Redis probed when no URL is configured."""
    startup_timeout_s: float = Field(default=30.0, gt=0)
    """How long to wait for a started service to answer."""


class EventLimits(_Frozen):
    """Limits applied when decoding events."""

    max_bytes: int = Field(default=16_384, ge=256)
    """Payloads longer than this go to the dead-letter topic as `oversized`."""


class Settings(_Frozen):
    """Everything a streamrec process is configured with."""

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
    snapshots: SnapshotConfig = SnapshotConfig()
    """Embedding snapshots: root directory, retention, publishing intervals."""
    learn: LearnConfig = LearnConfig()
    """The online learner and full training."""
    serving: ServingConfig = ServingConfig()
    """Retrieval, ranking and the API."""
    feast_project: str = "streamrec"
    """Feast project whose online store the jobs write."""
    feature_repo: Path = Path("features")
    """Directory of the Feast feature repository."""


def load_settings(path: Path | None = None, env: dict[str, str] | None = None) -> Settings:
    """Read settings from a YAML file and the environment (entry points only).

    Args:
        path: YAML file; defaults to `$STREAMREC_CONFIG` if set, else built-in defaults.
        env: environment to read (`KAFKA_BOOTSTRAP`, `REDIS_URL`, `STREAMREC_STATE_DIR`).

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
    if env.get("STREAMREC_STATE_DIR"):
        data.setdefault("stack", {})["state_dir"] = env["STREAMREC_STATE_DIR"]
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings{f' in {path}' if path else ''}: {exc}") from exc
