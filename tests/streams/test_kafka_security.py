"""Kafka security settings reach every client constructor streamrec has.

librdkafka reads `ssl.ca.location` when a client is created: a CA file that does not exist makes
the constructor itself fail, naming the property. So each client built with a TLS connection
whose CA file is missing must fail that way: proof that its configuration carried the
settings (a client built without them would start and only fail to connect). kafka-python's
consumer is checked by the arguments it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import KafkaException

from streams.config import KafkaConnection, KafkaSecurity, connection

MISSING_CA = "/nonexistent/streamrec-test-ca.pem"
SECURITY = KafkaSecurity(
    protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-256",
    username="svc-streamrec",
    password="s3cret",
    ca_file=Path(MISSING_CA),
)
SECURE = KafkaConnection("127.0.0.1:1", SECURITY)


def _carries_security(build: Callable[[], object]) -> None:
    """`build` fails in librdkafka's constructor on the missing CA file of `SECURE`."""
    with pytest.raises(KafkaException, match=r"ssl\.ca\.location failed"):
        build()


def test_confluent_clients_carry_the_security() -> None:
    from streams.kafka_io import make_consumer, make_producer, partitions_of, topic_id

    _carries_security(lambda: make_producer(SECURE))
    _carries_security(lambda: make_consumer(SECURE))
    _carries_security(lambda: partitions_of(SECURE, "t"))
    _carries_security(lambda: topic_id(SECURE, "t"))


def test_the_batch_source_partition_carries_the_security() -> None:
    """The Bytewax source builds its partition clients from the connection (the partition's
    config keeps the security properties for every client it makes later)."""
    from streams.kafka_io import KafkaBatchSource, client_config

    source = KafkaBatchSource(SECURE, "t", tail=False)
    _carries_security(lambda: source.build_part("in", "0", None))
    config = client_config(SECURE, **{"group.id": "g", "fetch.wait.max.ms": 10})
    assert client_config(config) == SECURE.librdkafka()  # what the partition's clients get


def test_bytewax_sinks_and_the_stack_carry_the_security() -> None:
    from bytewax.connectors.kafka import KafkaSink

    from infra import stack
    from streams.kafka_io import SINK_CONFIG

    add_config = {**SINK_CONFIG, **SECURITY.librdkafka()}  # what JobContext.sink_config gives
    sink = KafkaSink([SECURE.bootstrap], "t", add_config=add_config)
    _carries_security(lambda: sink.build("out", 0, 1))
    _carries_security(lambda: stack.ensure_topics(SECURE, ["t"], 1))
    assert not stack.kafka_answers(SECURE, 0.5)


def test_job_context_gives_its_clients_the_settings_security(tmp_path: Path) -> None:
    from infra.config import Settings
    from infra.jobs import JobContext
    from infra.stack import Service, StackState

    settings = Settings(data_dir=tmp_path, kafka={"security": SECURITY.model_dump()})
    where = StackState(Service(address=SECURE.bootstrap), Service(address="x"), [])
    ctx = JobContext(settings, where, True, False, None)
    assert ctx.kafka == SECURE
    assert ctx.sink_config()["sasl.mechanism"] == "SCRAM-SHA-256"
    assert ctx.sink_config()["acks"] == "all"


def test_the_snapshot_announcer_carries_the_security() -> None:
    from learners.subscription import kafka_announcer

    _carries_security(lambda: kafka_announcer(SECURE, "embedding-snapshots"))


def test_kafka_python_announcements_get_the_security(monkeypatch: pytest.MonkeyPatch) -> None:
    """The serving replicas' announcement reader (kafka-python) is given every setting."""
    import kafka

    from learners.subscription import Announcements

    given: dict = {}

    class Refused(Exception):
        pass

    def consumer(**options: object) -> None:
        given.update(options)
        raise Refused

    monkeypatch.setattr(kafka, "KafkaConsumer", consumer)
    with pytest.raises(Refused):
        Announcements(SECURE, "embedding-snapshots")
    assert given["bootstrap_servers"] == SECURE.bootstrap
    assert given["security_protocol"] == "SASL_SSL"
    assert given["sasl_mechanism"] == "SCRAM-SHA-256"
    assert given["sasl_plain_username"] == "svc-streamrec"
    assert given["sasl_plain_password"] == "s3cret"
    assert given["ssl_cafile"] == MISSING_CA
    assert given["group_id"] is None  # its own options are kept


def test_plaintext_adds_nothing_and_a_bare_address_is_plaintext() -> None:
    assert KafkaSecurity().librdkafka() == {}
    assert KafkaSecurity().kafka_python() == {}
    assert connection("h:9092").librdkafka() == {"bootstrap.servers": "h:9092"}


def test_mutual_tls_and_scram_512_properties() -> None:
    security = KafkaSecurity(
        protocol="SASL_SSL",
        username="u",
        password="pw-secret-1",
        ca_file=Path("/ca.pem"),
        cert_file=Path("/c.pem"),
        key_file=Path("/k.pem"),
        key_password="kp-secret-2",
        check_hostname=False,
    )
    assert security.librdkafka() == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "u",
        "sasl.password": "pw-secret-1",
        "ssl.endpoint.identification.algorithm": "none",
        "ssl.ca.location": "/ca.pem",
        "ssl.certificate.location": "/c.pem",
        "ssl.key.location": "/k.pem",
        "ssl.key.password": "kp-secret-2",
    }
    assert "secret" not in repr(security)  # secrets are never printed
