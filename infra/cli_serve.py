"""`streamrec serve`: the recommendation API on the live snapshots, features and filters.

With `--workers N` (N > 1) uvicorn's supervisor starts N worker processes on one socket. Each
builds its own service (`worker_app`): they share only Redis and the snapshot store, and each
follows the snapshot announcements itself. The parent hands the workers the settings file and
the addresses it checked through the environment (`STREAMREC_CONFIG`, `KAFKA_BOOTSTRAP`,
`REDIS_URL`), so every worker serves the same settings.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from infra.cli_options import ConfigOpt, console, services, settings_from
from infra.config import Settings
from infra.service import service_for

if TYPE_CHECKING:
    from fastapi import FastAPI

    from serving.service import Service


def _start_service(redis_url: str, bootstrap: str, settings: Settings | None = None) -> Service:
    """Build the service of `settings` (default: `settings_from(None)`) and follow snapshots."""
    import torch

    torch.set_num_threads(1)  # small per-request batches; extra threads only spin here
    settings = settings or settings_from(None)
    service = service_for(settings, redis_url)
    service.watcher.refresh()
    service.watcher.start(
        settings.kafka.connect(bootstrap), settings.kafka.topics.embedding_snapshots
    )
    return service


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn's factory with `--workers`): its own service on
    the settings and addresses the parent put in the environment."""
    service = _start_service(os.environ["REDIS_URL"], os.environ["KAFKA_BOOTSTRAP"])
    service.app.router.on_shutdown.append(service.watcher.stop)
    return service.app


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes (each its own service; they share Redis and the snapshots).",
        ),
    ] = 1,
    config: ConfigOpt = None,
) -> None:
    """Serve /recommend, /features, /notes, /healthz and /metrics (FastAPI + uvicorn)."""
    settings = settings_from(config)
    where = services(settings)  # before the slow imports: a stopped service fails fast

    import uvicorn

    if workers > 1:
        if config is not None:
            os.environ["STREAMREC_CONFIG"] = str(config.resolve())
        os.environ["KAFKA_BOOTSTRAP"] = where.bootstrap
        os.environ["REDIS_URL"] = where.redis_url
        console.print(
            f"serving on http://{host}:{port} with {workers} workers "
            f"(snapshots {settings.snapshots.location})"
        )
        uvicorn.run(
            "infra.cli_serve:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
        )
        return
    service = _start_service(where.redis_url, where.bootstrap, settings)
    console.print(f"serving on http://{host}:{port} (snapshots {settings.snapshots.location})")
    try:
        uvicorn.run(service.app, host=host, port=port, log_level="warning")
    finally:
        service.watcher.stop()
