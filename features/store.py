"""Build a Feast `FeatureStore` for a Redis URL and project, and register the definitions."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from feast import FeatureStore, RepoConfig
from feast.infra.online_stores.redis import RedisOnlineStoreConfig

from features.errors import FeaturesError

REPO = Path(__file__).resolve().parent


def connection_string(redis_url: str) -> str:
    """Turn redis://host:port/db into Feast's `host:port,db=N` form."""
    parsed = urlparse(redis_url)
    if parsed.scheme not in ("redis", "") or parsed.hostname is None:
        raise FeaturesError(f"expected a redis://host:port/db URL, got {redis_url!r}")
    db = (parsed.path or "/0").lstrip("/") or "0"
    return f"{parsed.hostname}:{parsed.port or 6379},db={db}"


def repo_config(redis_url: str, project: str, registry: Path) -> RepoConfig:
    """The repository's configuration, pointed at `redis_url` and `project`."""
    return RepoConfig(
        project=project,
        provider="local",
        registry=str(registry),
        online_store=RedisOnlineStoreConfig(connection_string=connection_string(redis_url)),
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )


def feature_store(redis_url: str, project: str, registry: Path | None = None) -> FeatureStore:
    """A FeatureStore on `redis_url` for `project` (registry file default: features/data/)."""
    registry = registry or REPO / "data" / f"registry-{project}.db"
    registry.parent.mkdir(parents=True, exist_ok=True)
    return FeatureStore(repo_path=str(REPO), config=repo_config(redis_url, project, registry))


def remove_project_files(project: str) -> None:
    """Delete what a project leaves under features/data: its offline log and default registry."""
    import shutil

    from features.definitions import offline_dir

    shutil.rmtree(offline_dir(project), ignore_errors=True)
    (REPO / "data" / f"registry-{project}.db").unlink(missing_ok=True)


def apply_definitions(store: FeatureStore) -> None:
    """Register the entities, push sources and feature views (what `feast apply` does)."""
    from features import definitions as d

    store.apply([d.user, d.note, *d.stats_views(store.project)])


def online_features(store: FeatureStore, view: str, ids: list[str]) -> dict[str, list]:
    """Read every feature of `view` for `ids` through `get_online_features`."""
    from features.schema import ENTITY_KEY, feature_types

    key = ENTITY_KEY[view]
    refs = [f"{view}:{name}" for name in feature_types(view)]
    return store.get_online_features(features=refs, entity_rows=[{key: i} for i in ids]).to_dict()
