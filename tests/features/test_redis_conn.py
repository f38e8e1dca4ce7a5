"""One URL per Redis: credentials, TLS options and `?cluster=true` reach redis-py and Feast."""

from __future__ import annotations

import pytest
import redis

from features.errors import FeaturesError
from features.feast_ext import StreamrecRedisOnlineStoreConfig
from features.redis_conn import connect, feast_connection, redact, split_url


def test_cluster_option_is_taken_out_of_the_url() -> None:
    assert split_url("redis://h:1/0?cluster=true&socket_timeout=2") == (
        "redis://h:1/0?socket_timeout=2",
        True,
    )
    assert split_url("rediss://u:p@h:1/3?cluster=false") == ("rediss://u:p@h:1/3", False)
    with pytest.raises(FeaturesError, match="only database 0"):
        split_url("redis://h:1/2?cluster=true")
    with pytest.raises(FeaturesError, match=r"u:\*\*\*@"):  # no password in the message
        split_url("http://u:secret@h:1")


def test_feast_gets_the_credentials_tls_options_and_cluster_type() -> None:
    url = "rediss://app:p%40ss@h:6380/0?cluster=true&ssl_ca_certs=/etc/ca.crt&socket_timeout=2"
    kind, connection = feast_connection(url)
    assert kind == "redis_cluster"
    assert connection == (
        "h:6380,ssl=true,username=app,password=p@ss,ssl_ca_certs=/etc/ca.crt,socket_timeout=2"
    )
    config = StreamrecRedisOnlineStoreConfig(url=url)
    assert config.redis_type.value == "redis_cluster" and config.connection_string == connection
    with pytest.raises(FeaturesError, match="comma"):
        feast_connection("redis://:a%2Cb@h:1/0")


def test_connect_makes_the_client_the_url_names() -> None:
    single = connect("rediss://u:p@127.0.0.1:1/4?ssl_ca_certs=/x/ca.crt&socket_timeout=3")
    kwargs = single.get_connection_kwargs()
    assert isinstance(single, redis.Redis) and kwargs["db"] == 4
    assert (kwargs["username"], kwargs["password"]) == ("u", "p")
    assert kwargs["ssl_ca_certs"] == "/x/ca.crt" and kwargs["socket_timeout"] == 3.0
    # a cluster client asks its seed node at once; the failure is a RedisError as any other
    with pytest.raises(redis.ConnectionError, match=r"Redis Cluster at redis://127\.0\.0\.1:1"):
        connect("redis://127.0.0.1:1/0?cluster=true", socket_connect_timeout=0.5)
    assert redact("redis://u:s3cret@h:1/0") == "redis://u:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"
