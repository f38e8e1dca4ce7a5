"""API authentication: with a token, every request but the probes needs it (401 otherwise);
served here over a Redis that itself wants an ACL user and mutual TLS."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from learners.config import LearnConfig
from serving.auth import check_token
from serving.config import ServingConfig
from serving.errors import ServingError
from serving.service import build_service
from tests.learners.helpers import publish_trained
from tests.secured_redis import SecuredRedis

TOKEN = uuid.uuid4().hex


@pytest.fixture
def client(tmp_path: Path, secured_redis: SecuredRedis) -> TestClient:
    publish_trained(tmp_path / "snapshots")
    learn = LearnConfig()
    service = build_service(
        secured_redis.tls_url,
        f"p{uuid.uuid4().hex[:6]}",
        tmp_path / "snapshots",
        (learn.ranker_model, learn.retriever_model),
        ServingConfig(redis_timeout_s=2.0),
        f"x{uuid.uuid4().hex[:6]}",
        api_token=TOKEN,
    )
    service.watcher.refresh()
    return TestClient(service.app)


def test_requests_need_the_bearer_token_probes_do_not(client: TestClient) -> None:
    for headers in ({}, {"Authorization": f"Bearer {TOKEN[:-1]}x"}, {"Authorization": TOKEN}):
        r = client.get("/recommend", params={"user_id": "u1"}, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/features/user/u1", headers=headers).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    r = client.get("/recommend", params={"user_id": "u1", "n": 5}, headers=auth)
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == 5
    lower = {"authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
    assert client.get("/features/user/u1", headers=lower).status_code == 404  # in; no row
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text  # Redis over mutual TLS answered the probe
    metrics = client.get("/metrics").text
    assert ',status="401"' in metrics  # refusals are counted


def test_a_token_too_short_to_be_a_secret_is_refused() -> None:
    with pytest.raises(ServingError, match="openssl rand"):
        check_token("short")
    with pytest.raises(ServingError, match="without spaces"):
        check_token("a" * 10 + " " + "b" * 10)
    assert check_token(f"  {TOKEN}\n") == TOKEN  # a file's newline is not part of it
