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
    EventLimits,
    ExperimentFlowConfig,
    KafkaConnection,
    KafkaSecurity,
    MetricsConfig,
    SamplesConfig,
    StatsConfig,
)

API_TOKEN_FILE_ENV = "STREAMREC_API_TOKEN_FILE"
"""Environment variable naming the API token file (`serving.api_token_file`)."""


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
    security: KafkaSecurity = KafkaSecurity()
    """SASL / TLS settings every Kafka client uses (producers, consumers, admin clients, the
    Bytewax connectors, kcat); the password comes from a file or `$KAFKA_SASL_PASSWORD`."""

    def connect(self, bootstrap: str) -> KafkaConnection:
        """The broker at `bootstrap` with these security settings: what clients are given."""
        return KafkaConnection(bootstrap, self.security)


JOB_PORTS = {"validate": 2101, "stats": 2102, "exposure": 2103, "samples": 2104}
"""Default cluster port of each stream job (its Bytewax processes talk to each other on it)."""


class ClusterConfig(_Frozen):
    """The hosts a stream job's Bytewax cluster spans; empty `hosts`: one host (`--processes`).

    Every host runs `streamrec run <job>` as one process of the cluster: process i listens on
    `hosts[i]:ports[<job>] + i` and reads its share of the topic's partitions. All hosts share
    this settings file; each gets its own `process_id` (`STREAMREC_PROCESS_ID` in its
    environment file).
    """

    hosts: tuple[str, ...] = ()
    """Host name or address of every process, in process order (process i runs on hosts[i]; a
    host may be listed more than once). `STREAMREC_CLUSTER_HOSTS` (comma-separated) overrides."""
    process_id: int | None = Field(default=None, ge=0)
    """This host's index in `hosts` (`STREAMREC_PROCESS_ID`); required when `hosts` is set."""
    ports: dict[str, int] = Field(default_factory=lambda: dict(JOB_PORTS))
    """Base cluster port per job: process i of a job listens on its base port + i."""

    @model_validator(mode="after")
    def _check(self) -> ClusterConfig:
        if self.process_id is not None and self.hosts and self.process_id >= len(self.hosts):
            raise ValueError(
                f"process_id {self.process_id} is not an index of the {len(self.hosts)} hosts"
            )
        return self

    def addresses(self, job: str) -> tuple[str, ...]:
        """host:port of every process of `job`'s cluster, in process order."""
        base = self.ports.get(job, JOB_PORTS.get(job))
        if base is None:
            raise ConfigError(f"cluster.ports has no port for job {job!r}: add one")
        return tuple(f"{host}:{base + i}" for i, host in enumerate(self.hosts))


class RedisConfig(_Frozen):
    """Where Redis is."""

    url: str | None = None
    """redis:// URL to use; None means 127.0.0.1:6379 if it answers, else a started one. It may
    carry an ACL user and password, `rediss://` with `ssl_ca_certs=` / `ssl_certfile=` /
    `ssl_keyfile=`, and `?cluster=true` for a Redis Cluster (`features.redis_conn`)."""


class StackConfig(_Frozen):
    """Settings of the local stack started by `streamrec infra up`."""

    default_redis: str = "redis://127.0.0.1:6379/0"
    """The Redis probed when no URL is configured."""
    startup_timeout_s: float = Field(default=30.0, gt=0)
    """How long to wait for a started service to answer."""
    redis_cluster: bool = False
    """Start a local Redis Cluster (`cluster_masters` masters, no replicas) instead of a single
    Redis when no Redis URL is set (`streamrec infra up --redis-cluster`)."""
    cluster_masters: int = Field(default=3, ge=1, le=16)
    """Masters of the local Redis Cluster."""


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
    cluster: ClusterConfig = ClusterConfig()
    """The hosts each stream job's cluster spans (empty: this host alone)."""
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
        env: environment to read (`KAFKA_BOOTSTRAP`, `REDIS_URL`, `STREAMREC_DATA_DIR`,
            `STREAMREC_CLUSTER_HOSTS`, `STREAMREC_PROCESS_ID`, `KAFKA_SASL_PASSWORD`,
            `KAFKA_SSL_KEY_PASSWORD`, `STREAMREC_API_TOKEN_FILE`).

    Returns:
        The validated settings; environment values override the file.

    Raises:
        ConfigError: the file cannot be read, is not a mapping, or holds invalid settings.
    """
    env = dict(os.environ) if env is None else env
    path = path or (Path(env["STREAMREC_CONFIG"]) if env.get("STREAMREC_CONFIG") else None)
    data: dict = {}
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(
                f"the settings file {path} holds a YAML {type(data).__name__}, not a mapping: "
                "write keys as in infra/config.py (e.g. `kafka: {bootstrap: host:port}`)"
            )
    if env.get("KAFKA_BOOTSTRAP"):
        data.setdefault("kafka", {})["bootstrap"] = env["KAFKA_BOOTSTRAP"]
    if env.get("REDIS_URL"):
        data.setdefault("redis", {})["url"] = env["REDIS_URL"]
    _kafka_secrets(data, env)
    if env.get("STREAMREC_CLUSTER_HOSTS"):
        hosts = [h.strip() for h in env["STREAMREC_CLUSTER_HOSTS"].split(",") if h.strip()]
        data.setdefault("cluster", {})["hosts"] = hosts
    if env.get("STREAMREC_PROCESS_ID"):
        data.setdefault("cluster", {})["process_id"] = env["STREAMREC_PROCESS_ID"]
    if env.get(API_TOKEN_FILE_ENV):
        data.setdefault("serving", {})["api_token_file"] = env[API_TOKEN_FILE_ENV]
    if env.get(DATA_DIR_ENV) or "data_dir" not in data:
        data["data_dir"] = default_data_dir(env)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings{f' in {path}' if path else ''}: {exc}") from exc


def _kafka_secrets(data: dict, env: dict[str, str]) -> None:
    """Put the Kafka secrets into `data`: the SASL password from `$KAFKA_SASL_PASSWORD`, else
    from `kafka.security.password_file`; the TLS key's password from `$KAFKA_SSL_KEY_PASSWORD`.

    Raises:
        ConfigError: the password file cannot be read.
    """
    security = data.get("kafka", {}).get("security")
    if not isinstance(security, dict) and not env.get("KAFKA_SASL_PASSWORD"):
        return
    security = data.setdefault("kafka", {}).setdefault("security", {})
    if env.get("KAFKA_SASL_PASSWORD"):
        security["password"] = env["KAFKA_SASL_PASSWORD"]
    elif security.get("password_file") and "password" not in security:
        path = Path(security["password_file"])
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the Kafka SASL password file {path} (kafka.security."
                f"password_file): {exc.strerror or exc}; make it readable by this user"
            ) from exc
        security["password"] = lines[0] if lines else ""
    if env.get("KAFKA_SSL_KEY_PASSWORD"):
        security["key_password"] = env["KAFKA_SSL_KEY_PASSWORD"]
