"""Assemble the recommendation service: snapshot watcher, feature client, exposure filter, app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from features.client import FeatureClient
from features.exposure import ExposureFilter
from features.redis_conn import connect
from serving.app import create_app
from serving.config import ServingConfig
from serving.experiments import ExperimentRouter
from serving.recommender import Recommender
from serving.watcher import SnapshotWatcher


@dataclass
class Service:
    """The HTTP app and the snapshot watcher behind it (the caller starts and stops it)."""

    app: FastAPI
    watcher: SnapshotWatcher
    recommender: Recommender


def build_service(
    redis_url: str,
    project: str,
    snapshot_root: Path | str,
    models: tuple[str, str],
    config: ServingConfig,
    exposure_namespace: str,
    api_token: str | None = None,
) -> Service:
    """The service over the stores at `redis_url` and the snapshots under `snapshot_root`.

    Args:
        redis_url: the Redis holding the online features and the exposure filters.
        project: the Feast project the stats job writes.
        snapshot_root: root directory (or fsspec URL) of the snapshots.
        models: (ranker, retriever) model names of the snapshots.
        config: retrieval, ranking and API settings.
        exposure_namespace: key namespace of the exposure filters.
        api_token: the bearer token every request but the probes must carry; None: open.
    """
    # Every Redis call is bounded: a hung Redis costs a request `redis_timeout_s` per call.
    client = connect(
        redis_url,
        socket_timeout=config.redis_timeout_s,
        socket_connect_timeout=config.redis_timeout_s,
    )
    ranker, retriever = models
    preranker = config.prerank.model if config.prerank.enabled else None
    watcher = SnapshotWatcher(snapshot_root, ranker, retriever, config, preranker)
    router = (
        ExperimentRouter(config.experiments, config, config.experiments_check_s)
        if config.experiments is not None
        else None
    )
    recommender = Recommender(
        watcher,
        FeatureClient(client, project),
        ExposureFilter(client, exposure_namespace),
        config,
        router,
    )
    app = create_app(
        recommender,
        config.max_n,
        config.default_n,
        config.max_in_flight,
        api_token,
        config.dashboard,
        config.compute_slots,
    )
    return Service(app, watcher, recommender)
