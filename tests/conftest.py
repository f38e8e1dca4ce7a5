"""Session fixtures: the real local stack (Tansu broker + Redis) shared by the whole suite.

`REDIS_CLUSTER=1` runs the suite's Redis on a local 3-master Redis Cluster the session starts
(`redis_url` then names it); the Redis-facing tests of `tests/features` run on both anyway
(`tests/features/conftest.py`)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import uuid
from collections.abc import Iterator

import pytest
import redis

from features.redis_conn import Client, connect
from infra import stack
from infra.config import Settings, load_settings
from tests import secured_redis as secured_redis_server
from tests.secured_redis import SecuredRedis

TEST_REDIS_DBS = range(3, 12)
"""Databases a test session may use; each session claims one no other running session holds
(DB 12 is bench.stats_check's, 14 bench.online_writer's, 0 the default)."""
CLAIM_KEY = "streamrec:test-session"
CLAIM_TTL_S = 300
"""A claim lapses this long after its session stops renewing it (a killed session frees its DB)."""


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings from the environment, with a private state directory for this test session."""
    state_dir = tmp_path_factory.mktemp("stack")
    return load_settings(env={**_env(), "STREAMREC_DATA_DIR": str(state_dir)})


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in ("KAFKA_BOOTSTRAP", "REDIS_URL")}


@pytest.fixture(scope="session")
def local_stack(settings: Settings) -> Iterator[stack.StackState]:
    """Bring the broker and Redis up once per session; stop what was started at the end."""
    state = stack.up(settings)
    yield state
    stack.down(settings)


@pytest.fixture(scope="session")
def bootstrap(local_stack: stack.StackState) -> str:
    """host:port of the session's Kafka-protocol broker."""
    return local_stack.bootstrap


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.RedisCluster]:
    """A local Redis Cluster of 3 masters for this session (started once, stopped at the end)."""
    cluster = stack.start_redis_cluster(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def secured_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredRedis]:
    """A redis-server with `requirepass`, an ACL user and mutual TLS (`tests/secured_redis.py`)."""
    urls, proc = secured_redis_server.start(tmp_path_factory.mktemp("secured-redis"))
    yield urls
    secured_redis_server.stop([proc], signal.SIGTERM)


@pytest.fixture(scope="session")
def redis_url(local_stack: stack.StackState, request: pytest.FixtureRequest) -> str:
    """URL of the test Redis database: a DB this session claims (so two test sessions on one
    machine never flush each other's data), flushed before and after the session; with
    `REDIS_CLUSTER=1`, the session's own Redis Cluster."""
    if os.environ.get("REDIS_CLUSTER", "") not in ("", "0"):
        yield request.getfixturevalue("redis_cluster").url
        return
    base = local_stack.redis_url.rsplit("/", 1)[0]
    token = uuid.uuid4().hex
    for db in TEST_REDIS_DBS:
        client = redis.Redis.from_url(f"{base}/{db}")
        if client.set(CLAIM_KEY, token, nx=True, ex=3600):
            break
        client.close()
    else:
        pytest.fail(f"every test Redis DB {list(TEST_REDIS_DBS)} is claimed by another session")
    client.flushdb()
    client.set(CLAIM_KEY, token, ex=CLAIM_TTL_S)
    done = threading.Event()
    keeper = threading.Thread(target=_keep_claim, args=(client, token, done), daemon=True)
    keeper.start()
    yield f"{base}/{db}"
    done.set()
    keeper.join()
    client.flushdb()
    client.close()


def _keep_claim(client: redis.Redis, token: str, done: threading.Event) -> None:
    """Renew the session's claim on its DB until `done` (a session killed lets it lapse)."""
    while not done.wait(CLAIM_TTL_S / 3):
        client.set(CLAIM_KEY, token, ex=CLAIM_TTL_S)


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Client]:
    """A client on the test database (a `RedisCluster` on a cluster URL)."""
    client = connect(redis_url)
    yield client
    client.close()


@pytest.fixture
def topic_name() -> str:
    """A fresh topic-name prefix, so tests never share data on the broker."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A local S3-API server (moto's, in a thread) for the session; its endpoint URL."""
    from moto.server import ThreadedMotoServer

    from infra.processes import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_url(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """`s3://<new bucket>/store` on the local S3 server; the AWS environment points at it."""
    import fsspec

    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"b{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(bucket)
    return f"s3://{bucket}/store"
