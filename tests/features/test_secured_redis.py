"""Every Redis client of `features` on a secured Redis: `requirepass`, an ACL user, mutual TLS.

The server (`tests/secured_redis.py`) refuses clients without credentials; through the URL
alone (`features.redis_conn.connect`, Feast's repo config) the writer, the reader, Feast, the
history and the exposure filters all work, and agree with each other.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import redis

from features.client import FeatureClient
from features.exposure import ExposureConfig, ExposureFilter, ExposureWriter
from features.history import HistoryWriter
from features.online_writer import OnlineWriter
from features.redis_conn import connect
from features.schema import feature_types
from features.store import apply_definitions, feature_store, online_features
from tests.secured_redis import SecuredRedis


@pytest.fixture(params=["password", "acl", "tls"])
def secured_url(request: pytest.FixtureRequest, secured_redis: SecuredRedis) -> str:
    return secured_redis.all()[request.param]


def test_the_server_refuses_clients_without_credentials(secured_redis: SecuredRedis) -> None:
    client = connect(secured_redis.no_auth_url)
    with pytest.raises(redis.AuthenticationError, match="Authentication required"):
        client.get("anything")
    client.close()
    # The TLS port: the URL's certificates are what lets a client in.
    no_cert = secured_redis.tls_url.split("&ssl_certfile")[0]
    client = connect(no_cert, socket_timeout=2, socket_connect_timeout=2)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    client.close()
    acl = connect(secured_redis.acl_url)
    with pytest.raises(redis.exceptions.NoPermissionError):
        acl.flushall()  # the application user cannot run the dangerous commands
    acl.close()


def test_writer_reader_feast_history_and_exposure_work_through_the_url(
    secured_url: str, tmp_path: Path
) -> None:
    project = f"s{uuid.uuid4().hex[:8]}"
    store = feature_store(secured_url, project, tmp_path)
    apply_definitions(store, tmp_path)
    client = connect(secured_url)
    ids = ["u1", "u2", "u3"]
    cols = {
        name: (np.arange(3) + i) if kind == "int64" else (np.arange(3) + i) / 7
        for i, (name, kind) in enumerate(feature_types("user_stats").items())
    }
    OnlineWriter(client, project).write("user_stats", ids, cols, 1_767_225_600_123)
    reader = FeatureClient.from_url(secured_url, project)
    got = reader.get("user", [*ids, "nobody"])
    assert got == online_features(store, "user_stats", [*ids, "nobody"])  # Feast reads it too
    assert got["clicks_1h"] == [int(v) for v in cols["clicks_1h"]] + [None]
    HistoryWriter(client, project).write(["u1"], [["n2", "n1"]], [5_000], (f"{project}:m", 5_000))
    assert reader.history(["u1", "u2"])[0] == [["n2", "n1"], []]
    ns = f"{project}-exp"
    ExposureWriter(client, ExposureConfig(namespace=ns)).add_batch(["u1"], ["n1"], [10**12])
    assert ExposureFilter(connect(secured_url), ns).seen("u1", ["n1", "n-never"])[0] is True
    reader.close()
    client.close()
