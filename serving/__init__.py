"""Serving: retrieval over the published snapshots, exposure filtering, ranking and the API.

Assemble the service (what `streamrec serve` runs) and start its snapshot watcher::

    from serving import ServingConfig, build_service

    service = build_service(redis_url, "streamrec", snapshot_root, ("ranker", "retriever"),
                            ServingConfig(), exposure_namespace="exposure")
    service.watcher.refresh()                       # load the newest snapshots
    service.watcher.start(bootstrap, "embedding-snapshots")
    # service.app is the FastAPI app: /recommend, /features, /notes, /healthz, /metrics

`Recommender.recommend(user_id, n)` is the same without HTTP. With `ServingConfig.experiments`
set, an `ExperimentRouter` applies each user's experiment arms (docs/experiments.md). Every
error raised here is a `ServingError`.
"""

from __future__ import annotations

from features.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "build_service": "serving.service",
        "Service": "serving.service",
        "ServingConfig": "serving.config",
        "FusionConfig": "serving.config",
        "PrerankConfig": "serving.config",
        "RerankConfig": "serving.config",
        "rerank": "serving.rerank",
        "ArmOverrides": "serving.config",
        "ExperimentRouter": "serving.experiments",
        "Recommender": "serving.recommender",
        "SnapshotWatcher": "serving.watcher",
        "NoteIndex": "serving.index",
        "create_app": "serving.app",
        "ServingError": "serving.errors",
        "NotReadyError": "serving.errors",
    },
)
