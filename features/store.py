"""Build a Feast `FeatureStore` for a Redis URL, project and data directory; register the views.

The registry lives at `<data_dir>/feast/registry-<project>.db` and the offline log under
`<data_dir>/feast/offline/<project>/` (`features.paths.DataPaths`) - the same files the
`feast -c features ...` command line reads for the repository's own project.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from feast import FeatureStore, RepoConfig
from feast.repo_config import RegistryConfig

from features.feast_ext import (
    REGISTRY_STORE,
    StreamrecRedisOnlineStoreConfig,
    connection_string,
)
from features.paths import DataPaths
from features.schema import ENTITY_KEY, feature_types

REPO = Path(__file__).resolve().parent

__all__ = [
    "REPO",
    "apply_definitions",
    "connection_string",
    "feature_store",
    "online_features",
    "remove_project_files",
    "repo_config",
]


def repo_config(redis_url: str, project: str, data_dir: Path) -> RepoConfig:
    """The repository's configuration, pointed at `redis_url`, `project` and `data_dir`."""
    registry = DataPaths(data_dir).registry(project)
    registry.parent.mkdir(parents=True, exist_ok=True)
    return RepoConfig(
        project=project,
        provider="local",
        registry=RegistryConfig(
            registry_type="file", registry_store_type=REGISTRY_STORE, path=str(registry)
        ),
        online_store=StreamrecRedisOnlineStoreConfig(url=redis_url),
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )


def feature_store(redis_url: str, project: str, data_dir: Path) -> FeatureStore:
    """A FeatureStore on `redis_url` for `project`, its files under `data_dir`."""
    return FeatureStore(repo_path=str(REPO), config=repo_config(redis_url, project, data_dir))


def remove_project_files(project: str, data_dir: Path) -> None:
    """Delete what a project keeps under `data_dir`: its offline log and its registry."""
    paths = DataPaths(data_dir)
    shutil.rmtree(paths.offline(project), ignore_errors=True)
    paths.registry(project).unlink(missing_ok=True)


def apply_definitions(store: FeatureStore, data_dir: Path) -> None:
    """Register the entities, push sources and feature views, the history's included (what
    `feast apply` does)."""
    from features import definitions as d

    offline = DataPaths(data_dir).offline(store.project)
    _empty_history_log(offline)
    store.apply([d.user, d.note, *d.stats_views(offline), d.history_view(offline)])


def _empty_history_log(offline: Path) -> None:
    """Give the history view's batch source an empty part, so that `feast materialize` (which
    reads every view's source) finds a dataset: the history reaches the online store from the
    joiner, and the sample log keeps it point in time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from features.history import HISTORY_FEATURE, HISTORY_VIEW
    from features.offline_log import CREATED, EVENT_TS

    directory = offline / HISTORY_VIEW
    directory.mkdir(parents=True, exist_ok=True)  # jobs started together apply at once
    if any(directory.glob("*.parquet")):
        return
    stamp = pa.timestamp("ms", tz="UTC")
    schema = pa.schema(
        [
            (ENTITY_KEY["user_stats"], pa.string()),  # the user entity's join key
            (EVENT_TS, stamp),
            (CREATED, stamp),
            (HISTORY_FEATURE, pa.list_(pa.string())),
        ]
    )
    staged = directory / f".part-empty-{uuid.uuid4().hex}"  # readers skip dot files
    pq.write_table(schema.empty_table(), staged)
    staged.replace(directory / "part-empty.parquet")  # atomic: never read half written


def online_features(store: FeatureStore, view: str, ids: list[str]) -> dict[str, list]:
    """Read every feature of `view` for `ids` through `get_online_features`."""
    key = ENTITY_KEY[view]
    refs = [f"{view}:{name}" for name in feature_types(view)]
    return store.get_online_features(features=refs, entity_rows=[{key: i} for i in ids]).to_dict()
