"""The one way streamrec connects to Redis: a URL names a single Redis or a Redis Cluster,
with its credentials and TLS, and every client of the system is made from it here.

    redis[s]://[[user]:password@]host:port[/db][?option=value&...]

- `user:password` - an ACL user (Redis 6+); `:password` alone - the `requirepass` password
  (percent-encode `@ : / ? #` in it);
- `rediss://` - TLS; `ssl_ca_certs=/path/ca.pem` trusts a private CA, `ssl_certfile=` and
  `ssl_keyfile=` present a client certificate (mutual TLS), `ssl_check_hostname=false` skips
  the host name check of the server's certificate;
- `cluster=true` - a Redis Cluster: `host:port` is any node (the others are discovered from it),
  commands are routed by hash slot, the database must be 0.

Every other redis-py URL option (`socket_timeout`, `health_check_interval`, ...) passes through.
The same URL configures Feast's online store (`feast_connection`): `redis_type: redis_cluster`
on a cluster, the credentials and TLS options in Feast's connection string.

Writers that pipeline raw protocol to one connection (`features.online_writer`, the reader)
ask `route` which node holds which keys and keep one connection per node.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from urllib.parse import parse_qsl, unquote, urlencode, urlparse, urlunparse

import redis
from redis.cluster import RedisCluster
from redis.connection import Connection
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from features.errors import FeaturesError

CLUSTER_OPTION = "cluster"
"""URL query option that marks a Redis Cluster (`?cluster=true`)."""
_TRUE = {"1", "true", "yes", "on"}
_FEAST_OPTIONS = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "socket_timeout",
    "socket_connect_timeout",
)
"""URL options Feast's connection string carries along (passed to its redis-py client)."""

Client = redis.Redis | RedisCluster
"""A client of the online store: a single Redis or a cluster."""


def split_url(url: str) -> tuple[str, bool]:
    """The URL without the `cluster` option, and whether it names a Redis Cluster.

    Raises:
        FeaturesError: not a redis:// or rediss:// URL, or a cluster URL with a database > 0.
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise FeaturesError(
            "expected a redis://[user:password@]host:port/db URL (or rediss://, and "
            f"?cluster=true for a Redis Cluster), got {redact(url)!r}"
        )
    query = parse_qsl(parsed.query, keep_blank_values=True)
    flags = [v for k, v in query if k == CLUSTER_OPTION]
    cluster = bool(flags) and flags[-1].lower() in _TRUE
    rest = urlencode([(k, v) for k, v in query if k != CLUSTER_OPTION])
    base = urlunparse(parsed._replace(query=rest))
    if cluster and (parsed.path or "/0").strip("/") not in ("", "0"):
        raise FeaturesError(
            f"a Redis Cluster has only database 0: drop {parsed.path!r} from {redact(url)!r}"
        )
    return base, cluster


def redact(url: str) -> str:
    """The URL with its password replaced by `***` (for messages and logs)."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    host = parsed.netloc.rsplit("@", 1)[-1]
    return urlunparse(parsed._replace(netloc=f"{parsed.username or ''}:***@{host}"))


def connect(url: str, **kwargs: object) -> Client:
    """A redis-py client of `url`: `redis.Redis`, or `RedisCluster` for `?cluster=true`.

    Raises:
        redis.ConnectionError: no node of a cluster answers (a cluster client connects at once).

    Args:
        kwargs: more client arguments (`socket_timeout=2`, ...); URL options win.
    """
    base, cluster = split_url(url)
    if not cluster:
        return redis.Redis.from_url(base, **kwargs)
    try:  # a cluster client asks a node for the slot map at once
        return RedisCluster.from_url(base, **kwargs)
    except RedisClusterException as exc:  # not a RedisError: callers catch those
        raise redis.ConnectionError(f"Redis Cluster at {redact(url)}: {exc}") from exc


def is_cluster(client: object) -> bool:
    """Whether `client` talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


def route(client: Client, keys: Sequence[bytes]) -> list[tuple[redis.Redis, list[int]]]:
    """Which node's client serves which of `keys` (their indices, in order).

    A single Redis serves them all; on a cluster the keys are grouped by the primary that
    holds their hash slot (the slot map redis-py keeps, refreshed when a node answers MOVED).
    """
    if not isinstance(client, RedisCluster):
        return [(client, list(range(len(keys))))]
    groups: dict[str, tuple[redis.Redis, list[int]]] = {}
    manager = client.nodes_manager
    for i, key in enumerate(keys):
        node = manager.get_node_from_slot(key_slot(key))
        group = groups.get(node.name)
        if group is None:
            group = groups[node.name] = (client.get_redis_connection(node), [])
        group[1].append(i)
    return list(groups.values())


def node_client(client: Client, key: bytes | str) -> redis.Redis:
    """The client of the node that holds `key` (`client` itself on a single Redis)."""
    if not isinstance(client, RedisCluster):
        return client
    raw = key.encode() if isinstance(key, str) else key
    return client.get_redis_connection(client.nodes_manager.get_node_from_slot(key_slot(raw)))


def refresh_slots(client: Client) -> None:
    """Reload a cluster's slot map (after MOVED/ASK replies to raw pipelined commands)."""
    if isinstance(client, RedisCluster):
        client.nodes_manager.initialize()


def feast_connection(url: str) -> tuple[str, str]:
    """Feast's `redis_type` and `connection_string` for `url`.

    The connection string is `host:port[,db=N],ssl=true,username=..,password=..,option=..`:
    user name, password (percent-decoded) and the TLS options are kept; a cluster gets
    `redis_cluster` and no database.

    Raises:
        FeaturesError: not a Redis URL, or a value Feast's comma-separated string cannot hold.
    """
    base, cluster = split_url(url)
    parsed = urlparse(base)
    parts = [f"{parsed.hostname}:{parsed.port or 6379}"]
    if not cluster:
        parts.append(f"db={(parsed.path or '/0').strip('/') or '0'}")
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    if parsed.username:
        parts.append(f"username={unquote(parsed.username)}")
    if parsed.password:
        parts.append(f"password={unquote(parsed.password)}")
    for key, value in parse_qsl(parsed.query):
        if key in _FEAST_OPTIONS:
            parts.append(f"{key}={value}")
    if any("," in p for p in parts):
        raise FeaturesError(
            "Feast's connection string cannot carry a comma in a password or option of "
            f"{redact(url)!r}: choose a password without one"
        )
    return ("redis_cluster" if cluster else "redis"), ",".join(parts)


def command_client(client: Client, *args: object) -> redis.Redis:
    """The client of the node a command's keys live on (`EVAL script 1 key ...` included)."""
    if not isinstance(client, RedisCluster):
        return client
    slot = client.determine_slot(*args)
    return client.get_redis_connection(client.nodes_manager.get_node_from_slot(slot))


def fan_out(client: Client, commands: Sequence[tuple[object, ...]]) -> list[object]:
    """Run `commands` (each `(name, key, ...)`) and return their raw replies, in order.

    Each node's commands go in one write on one pooled connection, all nodes' before any reply
    is read: one round trip of latency on a single Redis and on a cluster alike. An error
    reply is raised (the connections are dropped).
    """
    groups: dict[int, tuple[redis.Redis, list[int]]] = {}
    for i, args in enumerate(commands):
        node = command_client(client, *args)
        groups.setdefault(id(node), (node, []))[1].append(i)
    return exchange(
        groups.values(),
        len(commands),
        lambda conn, idx: conn.pack_commands([commands[i] for i in idx]),
    )


def exchange(
    groups: Iterable[tuple[redis.Redis, list[int]]],
    count: int,
    payload: Callable[[Connection, list[int]], list[bytes]],
) -> list[object]:
    """Send each node the packed commands `payload(conn, idx)` of its indices, every node's
    before any reply is read; return the `count` raw replies in index order.

    An error reply is raised (the connections are dropped); the pooled connections are always
    released.
    """
    held = []
    try:
        for node, idx in groups:
            conn = node.connection_pool.get_connection()
            held.append((node, conn, idx))
            conn.send_packed_command(payload(conn, idx))
        replies: list[object] = [None] * count
        for _, conn, idx in held:
            for i in idx:
                replies[i] = conn.read_response()
        return replies
    except BaseException:
        for _, conn, _ in held:
            conn.disconnect()
        raise
    finally:
        for node, conn, _ in held:
            node.connection_pool.release(conn)
