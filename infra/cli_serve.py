"""`streamrec serve`: the recommendation API on the live snapshots, features and filters."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

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


def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    config: ConfigOpt = None,
) -> None:
    """Serve /recommend, /features, /notes, /healthz and /metrics (FastAPI + uvicorn).

    With `serving.api_token_file` (or STREAMREC_API_TOKEN_FILE) every request but the probes
    needs `Authorization: Bearer <token>`; without one, only a loopback --host is allowed.
    """
    settings = settings_from(config)
    token = api_token(settings, host)
    where = services(settings)  # before the slow imports: a stopped service fails fast

    import torch
    import uvicorn

    torch.set_num_threads(1)  # small per-request batches; extra threads only spin here
    service = service_for(settings, where.redis_url, token)
    service.watcher.refresh()
    service.watcher.start(where.bootstrap, settings.kafka.topics.embedding_snapshots)
    auth = "bearer token required" if token else "no authentication (loopback only)"
    console.print(f"serving on http://{host}:{port} (snapshots {settings.snapshots.root}; {auth})")
    try:
        uvicorn.run(service.app, host=host, port=port, log_level="warning")
    finally:
        service.watcher.stop()
