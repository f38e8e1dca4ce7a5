"""`streamrec serve`: the recommendation API on the live snapshots, features and filters.

With `--workers N` (N > 1) uvicorn's supervisor starts N worker processes on one socket. Each
builds its own service (`worker_app`): they share only Redis and the snapshot store, and each
follows the snapshot announcements itself. The parent hands the workers the settings file and
the addresses it checked through the environment (`STREAMREC_CONFIG`, `KAFKA_BOOTSTRAP`,
`REDIS_URL`), so every worker serves the same settings.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from infra.cli_options import ConfigOpt, console, services, settings_from
from infra.config import API_TOKEN_FILE_ENV, Settings
from infra.errors import ConfigError
from infra.service import service_for
from serving.auth import check_token


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def api_token(settings: Settings, host: str) -> str | None:
    """The API token (`serving.api_token_file`, read here at the entry point); None when unset.

    Raises:
        ConfigError: no token for a non-loopback `host`, or the file cannot be read.
        ServingError: the token is too short to be a secret.
    """
    path = settings.serving.api_token_file
    if path is None:
        if _loopback(host):
            return None
        raise ConfigError(
            f"serving on {host} needs an API token: put one in a file (`openssl rand -hex 32`) "
            f"and set serving.api_token_file or {API_TOKEN_FILE_ENV} (docs/operations.md "
            '"Multi-host: Redis"), or bind 127.0.0.1'
        )
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the API token file {path}: {exc}") from exc
    return check_token(text)


if TYPE_CHECKING:
    from fastapi import FastAPI

    from serving.service import Service


def _start_service(
    redis_url: str, bootstrap: str, settings: Settings, token: str | None
) -> Service:
    """Build the service of `settings` (API `token` or none) and follow the snapshots."""
    import torch

    torch.set_num_threads(1)  # small per-request batches; extra threads only spin here
    from streams.runtime import tune_gc

    service = service_for(settings, redis_url, token)
    service.watcher.refresh()
    tune_gc()  # imports and first snapshots loaded: a full collection no longer walks them
    service.watcher.start(
        settings.kafka.connect(bootstrap), settings.kafka.topics.embedding_snapshots
    )
    return service


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn's factory with `--workers`): its own service on
    the settings and addresses the parent put in the environment (the parent checked the
    token's host rule; a worker reads the same token file)."""
    settings = settings_from(None)
    token = api_token(settings, "127.0.0.1")
    service = _start_service(
        os.environ["REDIS_URL"], os.environ["KAFKA_BOOTSTRAP"], settings, token
    )
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
    """Serve /recommend, /features, /notes, /healthz and /metrics (FastAPI + uvicorn).

    With `serving.api_token_file` (or STREAMREC_API_TOKEN_FILE) every request but the probes
    needs `Authorization: Bearer <token>`; without one, only a loopback --host is allowed.
    """
    settings = settings_from(config)
    token = api_token(settings, host)
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
        uvicorn.run(  # each worker reads the token file itself (`worker_app`)
            "infra.cli_serve:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
        )
        return
    service = _start_service(where.redis_url, where.bootstrap, settings, token)
    auth = "bearer token required" if token else "no authentication (loopback only)"
    console.print(
        f"serving on http://{host}:{port} (snapshots {settings.snapshots.location}; {auth})"
    )
    try:
        uvicorn.run(service.app, host=host, port=port, log_level="warning")
    finally:
        service.watcher.stop()
