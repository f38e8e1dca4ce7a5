"""The Redis-facing tests of `features` run on a single Redis and on a Redis Cluster.

Every test here that uses `redis_url` (or `redis_client`) runs twice, `[redis]` and `[cluster]`,
unless marked `single_redis` (tests whose subject is not the Redis behind them).
"""

from __future__ import annotations

import pytest

KINDS = ("redis", "cluster")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "single_redis: run on the single Redis only (not also on the cluster)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "redis_url" in metafunc.fixturenames and not metafunc.definition.get_closest_marker(
        "single_redis"
    ):
        metafunc.parametrize("redis_kind", KINDS)


@pytest.fixture
def redis_kind() -> str:
    """Which Redis a test runs on (parametrised by `pytest_generate_tests`)."""
    return "redis"


@pytest.fixture
def redis_url(request: pytest.FixtureRequest, redis_url: str, redis_kind: str) -> str:
    """The session's single Redis database, or the session's Redis Cluster."""
    if redis_kind == "cluster":
        return request.getfixturevalue("redis_cluster").url
    return redis_url
