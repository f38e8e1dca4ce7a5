"""Feast plugins that let the `feast` command line see what the streamrec jobs see.

`feature_store.yaml` names these classes, so `feast -c features ...` reads the same Redis as the
jobs (from `REDIS_URL`: password, ACL user, `rediss://` and its certificates kept, and
`?cluster=true` as Feast's `redis_cluster` type - `features.redis_conn`) and the same registry
file (under the data directory, `$STREAMREC_DATA_DIR`). The jobs build their `RepoConfig` in code
(`features.store.repo_config`) with the same classes, so both paths share one configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.infra.registry.file import FileRegistryStore
from feast.repo_config import RegistryConfig
from pydantic import StrictStr, model_validator

from features.paths import default_data_dir
from features.redis_conn import feast_connection

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
ONLINE_STORE = "features.feast_ext.StreamrecRedisOnlineStore"
REGISTRY_STORE = "features.feast_ext.DataDirRegistryStore"


def connection_string(redis_url: str) -> str:
    """Feast's `host:port,db=N[,ssl=true,username=..,password=..,...]` form of a Redis URL.

    User name and password (percent-decoded) and the TLS options are kept; `rediss://` becomes
    `ssl=true` (`features.redis_conn.feast_connection`).
    """
    return feast_connection(redis_url)[1]


class StreamrecRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Feast's Redis online store, configured by a Redis URL (`url: ${REDIS_URL}`); a URL with
    `?cluster=true` selects `redis_type: redis_cluster`."""

    type: Literal["features.feast_ext.StreamrecRedisOnlineStore"] = ONLINE_STORE  # type: ignore[assignment]
    """Online store type selector (this class)."""
    url: StrictStr = DEFAULT_REDIS_URL
    """The Redis URL; an unset `${REDIS_URL}` left as is by Feast means the default."""

    @model_validator(mode="before")
    @classmethod
    def _from_url(cls, data: Any) -> Any:
        if isinstance(data, dict):
            url = data.get("url") or DEFAULT_REDIS_URL
            if url.startswith("${"):
                url = DEFAULT_REDIS_URL
            redis_type, connection = feast_connection(url)
            data = {**data, "url": url, "connection_string": connection, "redis_type": redis_type}
        return data


class StreamrecRedisOnlineStore(RedisOnlineStore):
    """Feast's Redis online store; only its configuration (a URL) differs."""


class DataDirRegistryStore(FileRegistryStore):
    """Feast's file registry, with relative paths taken under the streamrec data directory."""

    def __init__(self, registry_config: RegistryConfig, repo_path: Path) -> None:
        path = Path(registry_config.path)
        if not path.is_absolute():
            path = default_data_dir() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(registry_config.model_copy(update={"path": str(path)}), repo_path)
