"""Feast plugins that let the `feast` command line see what the streamrec jobs see.

`feature_store.yaml` names these classes, so `feast -c features ...` reads the same Redis as the
jobs (from `REDIS_URL`, password and `rediss://` kept) and the same registry file (under the data
directory, `$STREAMREC_DATA_DIR`). The jobs build their `RepoConfig` in code
(`features.store.repo_config`) with the same classes, so both paths share one configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig
from feast.infra.registry.file import FileRegistryStore
from feast.repo_config import RegistryConfig
from pydantic import StrictStr, model_validator

from features.errors import FeaturesError
from features.paths import default_data_dir

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
ONLINE_STORE = "features.feast_ext.StreamrecRedisOnlineStore"
REGISTRY_STORE = "features.feast_ext.DataDirRegistryStore"


def connection_string(redis_url: str) -> str:
    """Turn a `redis://` or `rediss://` URL into Feast's `host:port,db=N[,ssl=true,...]` form.

    User name and password (percent-decoded) are kept; `rediss://` becomes `ssl=true`.
    """
    parsed = urlparse(redis_url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise FeaturesError(
            f"expected a redis://[user:password@]host:port/db URL (or rediss://), got {redis_url!r}"
        )
    db = (parsed.path or "/0").lstrip("/") or "0"
    parts = [f"{parsed.hostname}:{parsed.port or 6379}", f"db={db}"]
    if parsed.scheme == "rediss":
        parts.append("ssl=true")
    if parsed.username:
        parts.append(f"username={unquote(parsed.username)}")
    if parsed.password:
        password = unquote(parsed.password)
        if "," in password:
            raise FeaturesError("Feast's connection string cannot carry a password with a comma")
        parts.append(f"password={password}")
    return ",".join(parts)


class StreamrecRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """Feast's Redis online store, configured by a Redis URL (`url: ${REDIS_URL}`)."""

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
            data = {**data, "url": url, "connection_string": connection_string(url)}
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
