"""Shared set-up of the serving tests."""

from __future__ import annotations

import uuid
from pathlib import Path

from features.exposure import ExposureConfig
from infra.config import Settings, load_settings


def serving_settings(snapshots: Path, redis_url: str, **update: object) -> Settings:
    """Settings of one serving test: snapshots under `snapshots`, Redis at `redis_url`, an
    exposure namespace and Feast project of its own, Redis calls allowed 2 s (the shipped 0.1 s
    budget answers 503 on a loaded test machine; the tests of that budget set their own), then
    `update`."""
    ns = f"t{uuid.uuid4().hex[:6]}"
    base = load_settings(env={})
    return load_settings(env={"REDIS_URL": redis_url}).model_copy(
        update={
            "snapshots": base.snapshots.model_copy(update={"root": snapshots}),
            "exposure": ExposureConfig(namespace=ns),
            "feast_project": f"p{ns}",
            "serving": base.serving.model_copy(update={"redis_timeout_s": 2.0}),
            **update,
        }
    )
