"""`streamrec serve`: the recommendation API on the live snapshots, features and filters."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from infra import stack
from infra.config import Settings, load_settings

console = Console()


def build_service(settings: Settings, redis_url: str):
    """(app, watcher) for `settings`; the caller starts and stops the watcher."""
    import redis

    from features.exposure import ExposureFilter
    from features.online_reader import OnlineReader
    from serving.app import create_app
    from serving.recommender import Recommender
    from serving.watcher import SnapshotWatcher
    from streams.online_sink import hwm_key

    cfg = settings.serving
    client = redis.Redis.from_url(redis_url)
    watcher = SnapshotWatcher(
        settings.snapshots.root,
        settings.learn.ranker_model,
        settings.learn.retriever_model,
        cfg,
    )
    recommender = Recommender(
        watcher,
        OnlineReader(client, settings.feast_project),
        ExposureFilter(client, cfg.exposure_namespace or settings.exposure.namespace),
        cfg,
    )
    app = create_app(
        recommender,
        client,
        settings.feast_project,
        cfg.max_n,
        cfg.default_n,
        hwm_key(settings.feast_project, "stats"),
    )
    return app, watcher


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    config: Annotated[Path | None, typer.Option("--config", help="YAML settings file.")] = None,
) -> None:
    """Serve /recommend, /features, /notes, /healthz and /metrics (FastAPI + uvicorn)."""
    import torch
    import uvicorn

    torch.set_num_threads(1)  # small per-request batches; extra threads only spin here
    settings = load_settings(config)
    where = stack.endpoints(settings)
    app, watcher = build_service(settings, where.redis_url)
    watcher.refresh()
    watcher.start(where.bootstrap, settings.kafka.topics.embedding_snapshots)
    console.print(f"serving on http://{host}:{port} (snapshots {settings.snapshots.root})")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        watcher.stop()
