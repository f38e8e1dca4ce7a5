"""The recommendation service a `Settings` describes: the one assembly `streamrec serve`, the
tests and the serving benchmark use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from infra.config import Settings

if TYPE_CHECKING:
    from serving.service import Service


def service_for(settings: Settings, redis_url: str, api_token: str | None = None) -> Service:
    """The `serving.Service` that `settings` describe, on `redis_url` (requiring `api_token`
    as a bearer token when given)."""
    from serving.service import build_service

    return build_service(
        redis_url,
        settings.feast_project,
        settings.snapshots.location,
        (settings.learn.ranker_model, settings.learn.retriever_model),
        settings.serving,
        settings.serving.exposure_namespace or settings.exposure.namespace,
        api_token,
    )
