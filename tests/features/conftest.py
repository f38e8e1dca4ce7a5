"""The Redis-facing tests of `features` run on a single Redis and on a Redis Cluster."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["redis", "cluster"])
def redis_url(request: pytest.FixtureRequest, redis_url: str) -> str:
    """The session's single Redis database, or the session's Redis Cluster."""
    if request.param == "cluster":
        return request.getfixturevalue("redis_cluster").url
    return redis_url
