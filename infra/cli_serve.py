"""`streamrec serve`: the recommendation API on the live snapshots, features and filters."""

from __future__ import annotations

from typing import Annotated

import typer

from infra.cli_options import ConfigOpt, console, services, settings_from
from infra.service import service_for


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    config: ConfigOpt = None,
) -> None:
    """Serve /recommend, /features, /notes, /healthz and /metrics (FastAPI + uvicorn)."""
    settings = settings_from(config)
    where = services(settings)  # before the slow imports: a stopped service fails fast

    import torch
    import uvicorn

    torch.set_num_threads(1)  # small per-request batches; extra threads only spin here
    service = service_for(settings, where.redis_url)
    service.watcher.refresh()
    service.watcher.start(
        settings.kafka.connect(where.bootstrap), settings.kafka.topics.embedding_snapshots
    )
    console.print(f"serving on http://{host}:{port} (snapshots {settings.snapshots.location})")
    try:
        uvicorn.run(service.app, host=host, port=port, log_level="warning")
    finally:
        service.watcher.stop()
