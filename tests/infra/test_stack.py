"""The local stack: idempotent up, down stops only what up started, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from confluent_kafka.admin import AdminClient
from redis.cluster import RedisCluster

from features.redis_conn import connect
from infra import stack
from infra.config import load_settings
from infra.errors import (
    BrokerUnreachableError,
    ConfigError,
    RedisUnreachableError,
    StackError,
)


def test_up_twice_then_down(tmp_path: Path, redis_url: str) -> None:
    settings = load_settings(env={"STREAMREC_DATA_DIR": str(tmp_path), "REDIS_URL": redis_url})
    first = stack.up(settings)
    try:
        assert first.kafka.pid is not None  # a broker of its own was started
        assert first.redis.pid is None  # the Redis it was given is only used
        second = stack.up(settings)
        assert second == first
        topics = AdminClient({"bootstrap.servers": first.bootstrap}).list_topics(timeout=10)
        for name in settings.kafka.topics.all_names():
            assert len(topics.topics[name].partitions) == settings.kafka.topics.partitions
        report = {s.name: s for s in stack.status(settings)}
        assert report["kafka"].up and report["redis"].up, report
        assert "started by `streamrec infra up`" in report["kafka"].origin
        assert report["redis"].origin.startswith("set by REDIS_URL")
    finally:
        stopped = stack.down(settings)
    assert stopped == ["kafka"]
    assert not stack.kafka_answers(first.bootstrap, 1.0)
    assert stack.redis_answers(redis_url)  # a found Redis is never stopped
    with pytest.raises(StackError, match="KAFKA_BOOTSTRAP"):  # nothing recorded any more
        stack.status(settings)


def test_redis_is_started_when_none_answers(tmp_path: Path, bootstrap: str) -> None:
    settings = load_settings(
        env={"STREAMREC_DATA_DIR": str(tmp_path), "KAFKA_BOOTSTRAP": bootstrap}
    )
    settings = settings.model_copy(
        update={
            "stack": settings.stack.model_copy(update={"default_redis": "redis://127.0.0.1:1/0"})
        }
    )
    state = stack.up(settings)
    try:
        assert state.redis.pid is not None
        assert state.kafka.pid is None and state.bootstrap == bootstrap
        assert stack.redis_answers(state.redis_url)
        client = redis.Redis.from_url(state.redis_url)
        # feature hashes are hash tables, not listpacks (REDIS_TUNING)
        assert client.config_get("hash-max-listpack-entries") == {"hash-max-listpack-entries": "64"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.set("survives", "a kill -9")
        client.close()
        os.kill(state.redis.pid, signal.SIGKILL)  # the stack's Redis dies without a save
        again = stack.up(settings)  # a new Redis on the same data directory
        assert again.redis.pid not in (None, state.redis.pid)
        assert redis.Redis.from_url(again.redis_url).get("survives") == b"a kill -9"  # its AOF
    finally:
        assert stack.down(settings) == ["redis"]
    assert not stack.redis_answers(state.redis_url)
    assert stack.kafka_answers(bootstrap)


def test_infra_up_redis_cluster_starts_three_masters_and_down_stops_them(
    tmp_path: Path, bootstrap: str
) -> None:
    env = {**os.environ, "STREAMREC_DATA_DIR": str(tmp_path), "KAFKA_BOOTSTRAP": bootstrap}
    env.pop("REDIS_URL", None)
    cli = Path(sys.executable).with_name("streamrec")
    done = subprocess.run(
        [cli, "infra", "up", "--redis-cluster"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    settings = load_settings(
        env={"STREAMREC_DATA_DIR": str(tmp_path), "KAFKA_BOOTSTRAP": bootstrap}
    )
    state = stack.read_state(settings)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert state is not None and state.redis_url.endswith("?cluster=true")
        assert len(state.redis_nodes) == 3 and "cluster node" in done.stdout
        client = connect(state.redis_url)
        assert isinstance(client, RedisCluster) and len(client.get_primaries()) == 3
        # the keys spread over the masters, and every command finds its key's node
        client.mset_nonatomic({f"k{i}": i for i in range(64)})
        assert all(n.redis_connection.dbsize() > 0 for n in client.get_primaries())
        assert client.get("k63") == b"63"
        client.close()
        assert stack.up(settings, redis_cluster=True) == state  # idempotent: the same cluster
    finally:
        stopped = stack.down(settings)
    assert stopped == ["redis-cluster"]
    assert not any(stack.redis_answers(f"redis://{n.address}/0") for n in state.redis_nodes)


def test_unreachable_broker_is_a_one_line_error(tmp_path: Path) -> None:
    settings = load_settings(
        env={"STREAMREC_DATA_DIR": str(tmp_path), "KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    )
    with pytest.raises(BrokerUnreachableError, match=r"KAFKA_BOOTSTRAP=127\.0\.0\.1:1"):
        stack.up(settings)


def test_unreachable_redis_is_a_one_line_error(tmp_path: Path, bootstrap: str) -> None:
    settings = load_settings(
        env={
            "STREAMREC_DATA_DIR": str(tmp_path),
            "KAFKA_BOOTSTRAP": bootstrap,
            "REDIS_URL": "redis://127.0.0.1:1/0",
        }
    )
    with pytest.raises(RedisUnreachableError, match=r"REDIS_URL=redis://127\.0\.0\.1:1/0.*unset"):
        stack.up(settings)


def test_endpoints_without_up_says_what_to_do(tmp_path: Path) -> None:
    settings = load_settings(env={"STREAMREC_DATA_DIR": str(tmp_path)})
    with pytest.raises(StackError, match="streamrec infra up"):
        stack.endpoints(settings)


def test_bad_config_file_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kafka:\n  topics:\n    partitions: 0\n")
    with pytest.raises(ConfigError, match="partitions"):
        load_settings(path, env={})


@pytest.mark.parametrize("text", ["- kafka\n- redis\n", "just a string\n", "42\n"])
def test_config_file_that_is_not_a_mapping_is_a_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"not a mapping: write keys as in infra/config\.py"):
        load_settings(path, env={})


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "STREAMREC_DATA_DIR": str(tmp_path)}
    env.pop("KAFKA_BOOTSTRAP", None)
    env.pop("REDIS_URL", None)
    cli = Path(sys.executable).with_name("streamrec")
    done = subprocess.run(
        [cli, "topics", "summary"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 5  # no stack known (docs/operations.md, exit codes)
    assert "streamrec infra up" in done.stderr
    assert "Traceback" not in done.stderr


def test_up_with_monitoring_starts_prometheus_with_the_rules(
    tmp_path: Path, bootstrap: str, redis_url: str
) -> None:
    settings = load_settings(
        env={
            "STREAMREC_DATA_DIR": str(tmp_path),
            "KAFKA_BOOTSTRAP": bootstrap,
            "REDIS_URL": redis_url,
        }
    )
    settings = settings.model_copy(
        update={"metrics": settings.metrics.model_copy(update={"port": 9_400})}
    )
    state = stack.up(settings, monitoring=True)
    try:
        assert state.prometheus is not None and state.prometheus.pid is not None
        assert stack.up(settings, monitoring=True).prometheus == state.prometheus  # idempotent
        base = f"http://{state.prometheus.address}/api/v1"
        rules = json.loads(urllib.request.urlopen(f"{base}/rules", timeout=10).read())
        names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert "StreamrecConsumerLagGrowing" in names and "streamrec:job_events_in:rate1m" in names
        scraped: set[str] = set()
        deadline = time.monotonic() + 30
        while len(scraped) < 5 and time.monotonic() < deadline:  # discovery runs after ready
            targets = json.loads(urllib.request.urlopen(f"{base}/targets", timeout=10).read())
            scraped = {t["scrapeUrl"] for t in targets["data"]["activeTargets"]}
        assert f"http://127.0.0.1:{stack.SERVE_PORT}/metrics" in scraped
        assert (
            "http://127.0.0.1:9400/metrics" in scraped
            and "http://127.0.0.1:9403/metrics" in scraped
        )
    finally:
        stopped = stack.down(settings)
    assert stopped == ["prometheus"]  # the broker and Redis were only found
    assert not stack.prometheus_ready(state.prometheus.address)
