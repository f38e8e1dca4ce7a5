"""Serving under a Redis fault: bounded latency, honest answers, probes and metrics that work."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from features.exposure import ExposureConfig, ExposureWriter
from learners.config import LearnConfig
from serving.config import ServingConfig
from serving.service import build_service
from tests.learners.helpers import publish_trained

TIMEOUT_S = 0.1
DEADLINE_S = 3 * TIMEOUT_S  # a request makes at most three Redis calls, each bounded


@pytest.fixture
def hung_redis() -> Iterator[str]:
    """A Redis URL whose server accepts connections and never answers (a hung Redis)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)  # connections complete in the kernel; nothing ever reads them
    yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    server.close()


def _service(tmp_path: Path, redis_url: str, **serving):
    publish_trained(tmp_path / "snapshots")
    learn = LearnConfig()
    svc = build_service(
        redis_url,
        f"p{uuid.uuid4().hex[:6]}",
        tmp_path / "snapshots",
        (learn.ranker_model, learn.retriever_model),
        ServingConfig(redis_timeout_s=TIMEOUT_S, **serving),
        f"x{uuid.uuid4().hex[:6]}",
    )
    svc.watcher.refresh()
    return svc


def _up(text: str) -> dict[str, float]:
    return {
        s.labels["dependency"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "streamrec_up"
    }


@pytest.mark.serial
def test_with_redis_hung_every_request_answers_within_twice_the_deadline(
    tmp_path: Path, hung_redis: str
) -> None:
    client = TestClient(_service(tmp_path, hung_redis).app)
    for i in range(10):
        t0 = time.perf_counter()
        r = client.get("/recommend", params={"user_id": f"u{i}", "n": 10})
        elapsed = time.perf_counter() - t0
        assert elapsed < 2 * DEADLINE_S, f"request {i} took {elapsed:.3f} s"
        # Without the exposure filters it cannot know what was shown: 503, never a wrong 200.
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "exposure filters unavailable" in r.json()["detail"]
    assert client.get("/features/user/u1").status_code == 503
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert not checks["redis"]["ok"] and "Timeout" in checks["redis"]["detail"]
    assert checks["snapshots"]["ok"]
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert _up(metrics.text) == {"redis": 0.0, "snapshots": 1.0, "exposure": 0.0}


def test_features_missing_rank_with_the_priors_and_say_so(
    tmp_path: Path, redis_url: str, redis_client
) -> None:
    """Redis answers the exposure filter but the counts are missing: ranked on priors."""
    svc = _service(tmp_path, redis_url)
    ns = svc.recommender.exposure._ns
    ExposureWriter(redis_client, ExposureConfig(namespace=ns)).add_batch(["u1"], ["n1"], [10**12])

    def broken(*_args, **_kwargs):
        raise TimeoutError("Timeout reading from redis")

    svc.recommender.features.read = broken  # the counts' round trip times out
    body = TestClient(svc.app).get("/recommend", params={"user_id": "u1", "n": 10}).json()
    assert body["features_degraded"] is True and body["exposure_filtered"] is True
    assert len(body["items"]) == 10
    assert "n1" not in {i["note_id"] for i in body["items"]}


def test_beyond_max_in_flight_requests_get_503_with_retry_after(
    tmp_path: Path, redis_url: str
) -> None:
    svc = _service(tmp_path, redis_url, max_in_flight=2, compute_slots=2)
    gate = threading.Event()
    entered = threading.Semaphore(0)
    original = svc.recommender.recommend

    def slow(user_id: str, n: int):
        entered.release()
        gate.wait(10)
        return original(user_id, n)

    svc.recommender.recommend = slow
    client = TestClient(svc.app)
    results: list[int] = []
    workers = [
        threading.Thread(
            target=lambda: results.append(
                client.get("/recommend", params={"user_id": "u1"}).status_code
            )
        )
        for _ in range(2)
    ]
    for w in workers:
        w.start()
    assert entered.acquire(timeout=10) and entered.acquire(timeout=10)  # both in flight
    refused = client.get("/recommend", params={"user_id": "u2"})
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert client.get("/healthz").status_code == 200  # probes are always admitted
    assert client.get("/metrics").status_code == 200
    gate.set()
    for w in workers:
        w.join(10)
    assert results == [200, 200]


def test_recommend_calls_wait_for_a_compute_slot(tmp_path: Path, redis_url: str) -> None:
    svc = _service(tmp_path, redis_url, max_in_flight=4, compute_slots=1)
    gate = threading.Event()
    entered = threading.Semaphore(0)
    lock = threading.Lock()
    running, most = [0], [0]
    original = svc.recommender.recommend

    def slow(user_id: str, n: int):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        entered.release()
        gate.wait(10)
        try:
            return original(user_id, n)
        finally:
            with lock:
                running[0] -= 1

    svc.recommender.recommend = slow
    client = TestClient(svc.app)
    results: list[int] = []
    workers = [
        threading.Thread(
            target=lambda u=u: results.append(
                client.get("/recommend", params={"user_id": u}).status_code
            )
        )
        for u in ("u1", "u2")
    ]
    for w in workers:
        w.start()
    assert entered.acquire(timeout=10)  # one computes ...
    assert not entered.acquire(timeout=1.0)  # ... the other, admitted, waits for the slot
    gate.set()
    assert entered.acquire(timeout=10)  # and computes once the first is done
    for w in workers:
        w.join(10)
    assert results == [200, 200] and most[0] == 1
