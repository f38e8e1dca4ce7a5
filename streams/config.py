"""Job settings of the streaming flows (pure pydantic, cheap to import at entry points)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator


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
    log_url: str | None = None
    """fsspec URL of the parquet sample log every host can reach (`s3://bucket/prefix`;
    credentials and endpoint from the standard AWS environment); None: the local
    `<data_dir>/training-samples`."""


class MetricsConfig(BaseModel):
    """The Prometheus endpoint of every stream job process (`streams.metrics`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    port: int = Field(default=0, ge=0, le=65_535)
    """Base port of the jobs' `/metrics` endpoints; 0: no endpoint. A job of `--processes N`
    serves process i at `port + i`; `streamrec run <job> --metrics-port P` overrides it, so
    jobs that run at the same time on one host each need their own range."""
    host: str = "127.0.0.1"
    """Address the endpoints listen on (`0.0.0.0` for a Prometheus on another host)."""


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


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSecurity(BaseModel):
    """How every Kafka client of streamrec authenticates and encrypts: SASL and/or TLS.

    The same settings reach every producer, consumer and admin client (confluent-kafka and the
    Bytewax connectors as librdkafka properties, kafka-python as its keyword arguments, kcat as
    a properties file). Secrets never sit in the settings file: the settings loader reads the
    password from `password_file` or `$KAFKA_SASL_PASSWORD`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    protocol: SecurityProtocol = "PLAINTEXT"
    """`PLAINTEXT` (none), `SSL` (TLS), `SASL_PLAINTEXT` (SASL, no TLS) or `SASL_SSL` (both)."""
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    """SASL mechanism for the SASL protocols: `SCRAM-SHA-256`, `SCRAM-SHA-512` or `PLAIN`
    (PLAIN sends the password as is: use it with `SASL_SSL` only)."""
    username: str | None = None
    """SASL user name (required by the SASL protocols)."""
    password: SecretStr | None = None
    """SASL password: set by the settings loader from `password_file` or
    `$KAFKA_SASL_PASSWORD`; never printed."""
    password_file: Path | None = None
    """File holding the SASL password (its first line), read at the entry point."""
    ca_file: Path | None = None
    """PEM file of the CA(s) that signed the brokers' certificates (TLS protocols); None: the
    system's CAs."""
    cert_file: Path | None = None
    """PEM client certificate for mutual TLS (with `key_file`)."""
    key_file: Path | None = None
    """PEM private key of `cert_file`."""
    key_password: SecretStr | None = None
    """Password of an encrypted `key_file` (`$KAFKA_SSL_KEY_PASSWORD`)."""
    check_hostname: bool = True
    """Check that a broker's certificate names the host connected to (TLS protocols)."""

    @model_validator(mode="after")
    def _check(self) -> KafkaSecurity:
        if self.sasl and not self.username:
            raise ValueError(f"kafka security protocol {self.protocol} needs a username")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("kafka security: cert_file and key_file go together (mutual TLS)")
        if not self.tls and any((self.ca_file, self.cert_file)):
            raise ValueError(
                f"kafka security: ca_file/cert_file are TLS settings, but protocol {self.protocol} "
                "has no TLS: use SSL or SASL_SSL"
            )
        return self

    @property
    def sasl(self) -> bool:
        """Whether the protocol authenticates with SASL."""
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        """Whether the protocol encrypts with TLS."""
        return self.protocol in ("SSL", "SASL_SSL")

    def librdkafka(self) -> dict[str, str]:
        """The settings as librdkafka properties (confluent-kafka, Bytewax's connectors, kcat);
        empty for PLAINTEXT."""
        if self.protocol == "PLAINTEXT":
            return {}
        props = {"security.protocol": self.protocol}
        if self.sasl:
            props["sasl.mechanism"] = self.sasl_mechanism
            props["sasl.username"] = self.username or ""
            props["sasl.password"] = self.password.get_secret_value() if self.password else ""
        if self.tls:
            props["ssl.endpoint.identification.algorithm"] = (
                "https" if self.check_hostname else "none"
            )
            if self.ca_file is not None:
                props["ssl.ca.location"] = str(self.ca_file)
            if self.cert_file is not None and self.key_file is not None:
                props["ssl.certificate.location"] = str(self.cert_file)
                props["ssl.key.location"] = str(self.key_file)
            if self.key_password is not None:
                props["ssl.key.password"] = self.key_password.get_secret_value()
        return props

    def kafka_python(self) -> dict[str, object]:
        """The settings as `kafka.KafkaConsumer` / `KafkaProducer` keyword arguments."""
        if self.protocol == "PLAINTEXT":
            return {}
        options: dict[str, object] = {"security_protocol": self.protocol}
        if self.sasl:
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.username
            options["sasl_plain_password"] = (
                self.password.get_secret_value() if self.password else ""
            )
        if self.tls:
            options["ssl_check_hostname"] = self.check_hostname
            if self.ca_file is not None:
                options["ssl_cafile"] = str(self.ca_file)
            if self.cert_file is not None:
                options["ssl_certfile"] = str(self.cert_file)
                options["ssl_keyfile"] = str(self.key_file)
            if self.key_password is not None:
                options["ssl_password"] = self.key_password.get_secret_value()
        return options


@dataclass(frozen=True)
class KafkaConnection:
    """A broker and how to talk to it: what every Kafka client of streamrec is given."""

    bootstrap: str
    """host:port of a broker (comma-separated for several)."""
    security: KafkaSecurity = field(default_factory=KafkaSecurity)
    """SASL / TLS settings."""

    def __str__(self) -> str:
        return self.bootstrap

    def librdkafka(self, **overrides: object) -> dict:
        """librdkafka properties: `bootstrap.servers`, the security settings, then `overrides`."""
        return {"bootstrap.servers": self.bootstrap, **self.security.librdkafka(), **overrides}

    def kafka_python(self, **overrides: object) -> dict:
        """kafka-python keyword arguments: `bootstrap_servers`, security, then `overrides`."""
        return {"bootstrap_servers": self.bootstrap, **self.security.kafka_python(), **overrides}


Broker = str | KafkaConnection
"""What a Kafka client takes: a bare host:port (no security) or a `KafkaConnection`."""


def connection(broker: Broker) -> KafkaConnection:
    """`broker` as a `KafkaConnection` (a bare host:port gets no security)."""
    return broker if isinstance(broker, KafkaConnection) else KafkaConnection(broker)
