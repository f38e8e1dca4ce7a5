"""The API's /dashboard: the sampler's reductions, then the page in headless Chromium against a
running API reading a real job's and a real online learner's metrics endpoints."""

from __future__ import annotations

import itertools
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from bytewax.testing import run_main
from prometheus_client import CollectorRegistry

from features.client import mark_key
from features.redis_conn import connect
from infra.cli_learn import _learner_collector
from infra.processes import free_port
from infra.service import service_for
from learners.online import OnlineLearner
from serving.config import DashboardConfig
from serving.dashboard import parse, point, totals
from streams import metrics
from streams.events import encode_event
from streams.kafka_io import KafkaBatchSource, make_producer
from streams.sinks import CallbackSink
from streams.validate import build_flow
from tests.learners.helpers import CONFIG, Clock, messages, publish_trained
from tests.serving.helpers import serving_settings
from tests.streams.helpers import create_topics, make_event

PANELS = ("freshness", "throughput", "dlq", "lag", "auc", "channels")


def test_points_are_rates_and_shares_of_what_the_endpoints_said() -> None:
    def page(events: float, dead: float, two_tower: float, fresh: float, auc: float) -> str:
        return f"""
streamrec_job_events_in_total{{flow="stats",partition="0"}} {events}
streamrec_job_events_in_total{{flow="stats",partition="1"}} {events}
streamrec_job_dead_letters_total{{flow="stats",reason="not_json"}} {dead}
streamrec_job_consumer_lag{{flow="stats",topic="t",partition="0"}} 7
streamrec_job_consumer_lag{{flow="stats",topic="t",partition="1"}} 5
streamrec_job_event_time_watermark_seconds{{flow="stats",partition="0"}} 990
streamrec_job_event_time_watermark_seconds{{flow="stats",partition="1"}} 995
streamrec_channel_items_total{{channel="two_tower"}} {two_tower}
streamrec_channel_items_total{{channel="fresh"}} {fresh}
streamrec_learner_auc{{flow="learn-online",task="click"}} {auc}
streamrec_learner_auc{{flow="learn-online",task="like"}} NaN
streamrec_feature_freshness_seconds NaN
"""

    first = totals(parse(page(100, 1, 10, 0, 0.7)), 1_000.0)
    second = totals(parse(page(300, 4, 16, 2, 0.75)), 1_002.0)
    assert first["lag"] == {"stats": 12} and first["watermark_delay_s"] == {"stats": 10.0}
    assert first["freshness_s"] is None and first["auc"] == {"click": 0.7}  # NaN left out
    p = point(1_002.0, second, first, 1_000.0)
    assert p["throughput"]["stats in"] == 200.0  # (600 - 200) / 2 s
    assert p["dead_letters"] == {"not_json": 1.5}
    assert p["channel_share"] == {"two_tower": 16 / 18, "fresh": 2 / 18}  # of all answers
    assert p["auc"] == {"click": 0.75}
    restarted = totals(parse(page(50, 0, 16, 2, 0.75)), 1_004.0)  # a job restarted from 0
    assert point(1_004.0, restarted, second, 1_002.0)["throughput"]["stats in"] == 50.0
    first["counters"].pop("stats in")  # a series that appears counts from 0
    assert point(1_002.0, second, first, 1_000.0)["throughput"]["stats in"] == 300.0
    assert point(1_000.0, first, None, 1_000.0)["throughput"] == {}


def _panels(driver) -> list[tuple[str, str, str]]:
    """(id, ready, headline value) of every panel of the page."""
    return driver.execute_script(
        "return [...document.querySelectorAll('.panel')]"
        ".map(p => [p.id, p.dataset.ready, p.querySelector('.value').textContent])"
    )


def _serve(app) -> Iterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def learner_endpoint(tmp_path: Path, bootstrap: str, topic_name: str) -> Iterator[tuple]:
    """An online learner trained on 2,000 samples in this process, its metrics served as
    `streamrec learn online --metrics-port` serves them; (host:port, its click AUC, snapshots)."""
    snapshots = publish_trained(tmp_path / "snapshots", preranker=True)
    learner = OnlineLearner.from_latest(CONFIG, snapshots, clock=Clock())
    learner.run(iter(messages(seed=41, n=2_000, users=300)))
    create_topics(bootstrap, f"{topic_name}-samples")
    collector, watcher = _learner_collector(learner, bootstrap, f"{topic_name}-samples")
    registry = CollectorRegistry()
    registry.register(collector)
    server = metrics.serve(0, registry=registry)
    yield f"127.0.0.1:{server.port}", learner.ranker.prequential.auc()["click"], tmp_path
    server.shutdown()
    watcher.close()


def test_the_dashboard_renders_every_panel_in_headless_chromium(
    learner_endpoint: tuple, redis_url: str, bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.support.ui import WebDriverWait

    learner_at, click_auc, _ = learner_endpoint
    job = metrics.serve(0)  # this process's job metrics, as `streamrec run --metrics-port`
    targets = [f"127.0.0.1:{job.port}", learner_at]
    dashboard = DashboardConfig(targets=targets, every_s=0.3)
    settings = serving_settings(tmp_path / "snapshots", redis_url)
    settings = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"dashboard": dashboard})}
    )
    service = service_for(settings, redis_url)
    service.watcher.refresh()
    connect(redis_url).set(mark_key(settings.feast_project, "stats"), int(time.time() * 1000))
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,860"):
        options.add_argument(arg)
    api = _serve(service.app)
    base = next(api)
    driver = webdriver.Chrome(options=options, service=DriverService(shutil.which("chromedriver")))
    try:
        with httpx.Client(base_url=base, timeout=10) as http:
            for i in range(8):
                assert http.get("/recommend", params={"user_id": f"u{i}", "n": 10}).is_success
            driver.get(f"{base}/dashboard")  # starts the sampler

            def sampled() -> bool:
                return len(http.get("/dashboard/data").json()["points"]) >= 2

            WebDriverWait(driver, 20, 0.05).until(lambda _: sampled())
            # a job runs now: 300 events, 3 of them not JSON, read while the page samples
            create_topics(bootstrap, topic_name)
            producer = make_producer(bootstrap)
            for i in range(300):
                value = b"{not json" if i % 100 == 0 else encode_event(make_event("click", i))
                producer.produce(topic_name, value, f"u{i}".encode())
            assert producer.flush(10) == 0
            source = KafkaBatchSource(bootstrap, topic_name, tail=False, job=f"dash{topic_name}")
            run_main(build_flow(source, CallbackSink(lambda _: None), CallbackSink(lambda _: None)))
            dead = sum(  # the page sums every reason and job (earlier tests' runs included)
                v
                for (name, _), v in parse(metrics.exposition().decode()).items()
                if name == "streamrec_job_dead_letters_total"
            )
            assert dead >= 3
            items = {
                k[1][0][1]: v
                for k, v in parse(http.get("/metrics").text).items()
                if k[0] == "streamrec_channel_items_total" and v
            }

            def rendered(d) -> bool:  # drawn from data sampled after the job had been read
                ready = d.execute_script(
                    "return [...document.querySelectorAll('.panel')].map(p => p.dataset.ready)"
                )
                drawn = int(d.execute_script("return document.body.dataset.samples || 0"))
                text = d.find_element("id", "dlq").find_element("class name", "value").text
                return (
                    ready == ["1"] * len(PANELS)
                    and drawn >= after
                    and text == f"{_number(dead)} dead letters"
                )

            def read() -> float:  # every message the job read: the sum of rate x interval
                points = http.get("/dashboard/data").json()["points"]
                return sum(
                    b["throughput"].get("validate in", 0.0) * (b["t"] - a["t"])
                    for a, b in itertools.pairwise(points)
                )

            try:  # sampled after the job, then drawn (a count the page abbreviates can't tell)
                WebDriverWait(driver, 20, 0.05).until(lambda _: read() >= 300 - 1e-6)
                # a page drawn before (the dead-letter count it abbreviates may not tell) won't do
                after = len(http.get("/dashboard/data").json()["points"])
                WebDriverWait(driver, 20, 0.05).until(rendered)
            except TimeoutException:
                targets = http.get("/dashboard/data").json()["targets"]
                pytest.fail(f"expected {_number(dead)} dead letters: {_panels(driver)} {targets}")
            assert read() == pytest.approx(300, rel=1e-6)
        value = {p: driver.find_element("id", p).find_element("class name", "value").text
                 for p in PANELS}  # fmt: skip
        fresh = re.fullmatch(r"([0-9.]+) s", value["freshness"])
        assert fresh and 0 <= float(fresh.group(1)) < 60
        assert re.fullmatch(r"[0-9.k]+ events/s read", value["throughput"]), value
        assert re.fullmatch(r"[0-9.k]+ messages behind", value["lag"]), value
        assert value["auc"] == f"click {click_auc:.3f}"
        top = max(items, key=items.get)
        assert value["channels"] == f"{top} {100 * items[top] / sum(items.values()):.1f}%"
        # the throughput series saw the job's events, the legend names its flow
        legend = driver.find_element("id", "throughput").find_element("class name", "legend")
        assert "validate in" in legend.text and "learn-online samples" in legend.text
        shot = tmp_path / "dashboard.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()
        service.app.state.dashboard.stop()
        next(api, None)
        job.shutdown()


def _number(v: float) -> str:
    """A count as the page's `fmt` writes it (serving/dashboard.html)."""
    a = abs(v)
    if v == int(v) and a < 1e4:
        return str(int(v))
    if a >= 1e6:
        return f"{v / 1e6:.1f}M"
    if a >= 1e4:
        return f"{v / 1e3:.1f}k"
    if a >= 100:
        return f"{v:.0f}"
    return f"{v:.2f}" if a >= 1 else f"{v:.3f}"
