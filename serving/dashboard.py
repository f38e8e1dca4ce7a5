"""The API's /dashboard: freshness, throughput, dead letters, lag, AUC and channel mix over time.

A `Sampler` (one daemon thread per app, started by the first /dashboard request) reads every
`every_s` the app's own metrics and each configured Prometheus endpoint (the stream jobs', the
online learner's: `serving.dashboard.targets`), reduces them to one `point` (rates from the
previous sample's counters) and keeps the newest `points`. `/dashboard/data` returns them as
JSON; `/dashboard` is one self-contained page (`dashboard.html`: inline JS drawing SVG, nothing
fetched from anywhere but this API) that polls it. Nothing needs Prometheus itself.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from serving.config import DashboardConfig

PAGE = Path(__file__).with_name("dashboard.html")
"""The page (self-contained: its script and styles inline)."""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""(sample name, sorted labels) -> value of one scrape."""


def parse(text: str) -> Samples:
    """The samples of a Prometheus text page."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def url_of(target: str) -> str:
    """The URL of a target: `host:port` -> `http://host:port/metrics`; a URL as it is."""
    return target if "://" in target else f"http://{target}/metrics"


def _by(samples: Samples, name: str, label: str) -> dict[str, float]:
    """Sum of the `name` samples per value of `label` (NaN samples left out)."""
    out: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n == name and not math.isnan(v):
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + v
    return out


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) or math.isinf(value) else value


def totals(samples: Samples, now: float) -> dict:
    """What one scrape of every endpoint says: counters as they are, gauges reduced."""
    inflows = _by(samples, "streamrec_job_events_in_total", "flow")
    learner = _by(samples, "streamrec_learner_samples_total", "flow")
    requests = {
        dict(labels)["status"]: v
        for (n, labels), v in samples.items()
        if n == "streamrec_requests_total" and dict(labels).get("endpoint") == "/recommend"
    }
    marks: dict[str, float] = {}
    for (n, labels), v in samples.items():
        if n == "streamrec_job_event_time_watermark_seconds" and v > 0:
            flow = dict(labels).get("flow", "")
            marks[flow] = min(marks.get(flow, v), v)
    freshness = [v for (n, _), v in samples.items() if n == "streamrec_feature_freshness_seconds"]
    return {
        "counters": {
            **{f"{flow} in": v for flow, v in inflows.items()},
            **{f"{flow} samples": v for flow, v in learner.items()},
            "api /recommend": requests.get("200", 0.0),
        },
        "dead_letters": _by(samples, "streamrec_job_dead_letters_total", "reason"),
        "channels": _by(samples, "streamrec_channel_items_total", "channel"),
        "lag": _by(samples, "streamrec_job_consumer_lag", "flow"),
        "watermark_delay_s": {flow: now - mark for flow, mark in marks.items()},
        "auc": {
            task: v
            for task, v in _by(samples, "streamrec_learner_auc", "task").items()
            if _finite(v) is not None
        },
        "freshness_s": _finite(freshness[0]) if freshness else None,
    }


def _rates(now: dict[str, float], before: dict[str, float], dt: float) -> dict[str, float]:
    """Per-second increase of each counter (one that went down restarted from 0, one not there
    before started from 0)."""
    out = {}
    for key, v in now.items():
        b = before.get(key, 0.0)
        out[key] = (v - b if v >= b else v) / dt
    return out


def point(t: float, now: dict, before: dict | None, t_before: float) -> dict:
    """One sample of the page: levels, rates over the interval since `before`, and each
    channel's share of the notes this API process has returned."""
    dt = max(t - t_before, 1e-9)
    prev = before or {"counters": {}, "dead_letters": {}, "channels": {}}
    shown = sum(now["channels"].values())
    return {
        "t": t,
        "freshness_s": now["freshness_s"],
        "throughput": _rates(now["counters"], prev["counters"], dt) if before else {},
        "dead_letters": _rates(now["dead_letters"], prev["dead_letters"], dt) if before else {},
        "lag": now["lag"],
        "watermark_delay_s": now["watermark_delay_s"],
        "auc": now["auc"],
        "channel_share": {c: n / shown for c, n in now["channels"].items()} if shown else {},
    }


class Sampler:
    """Samples the API's metrics and the configured endpoints every `config.every_s`.

    Args:
        config: targets, interval, points kept, timeout.
        local: the API's own metrics page (what /metrics serves), called from the thread.
        clock: Unix seconds.
    """

    def __init__(
        self,
        config: DashboardConfig,
        local: Callable[[], bytes],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config, self.local, self.clock = config, local, clock
        self.points: deque[dict] = deque(maxlen=config.points)
        self.targets: dict[str, dict] = {
            url_of(t): {"up": False, "error": ""} for t in config.targets
        }
        self.latest: dict = {}
        self._last: tuple[float, dict] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max(1, len(self.targets)), "dashboard-scrape")

    def _read(self, url: str) -> Samples:
        """One endpoint's samples ({} and marked down when it fails or is too slow)."""
        try:
            with urllib.request.urlopen(url, timeout=self.config.timeout_s) as r:
                samples = parse(r.read().decode())
        except (OSError, ValueError) as exc:
            self.targets[url].update(up=False, error=f"{type(exc).__name__}: {exc}")
            return {}
        self.targets[url].update(up=True, error="")
        return samples

    def scrape(self) -> Samples:
        """Every endpoint's samples now, the endpoints asked at once."""
        samples = parse(self.local().decode())
        for got in self._pool.map(self._read, list(self.targets)):
            samples.update(got)
        return samples

    def sample(self) -> dict:
        """Take one sample now and keep it; return it."""
        samples = self.scrape()
        t = self.clock()
        now = totals(samples, t)
        with self._lock:
            before, t_before = (self._last[1], self._last[0]) if self._last else (None, t)
            p = point(t, now, before, t_before)
            self.points.append(p)
            self._last, self.latest = (t, now), now
        return p

    def start(self) -> None:
        """Start sampling in a daemon thread (once; later calls do nothing)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="dashboard", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.config.every_s):
                return

    def stop(self) -> None:
        """Stop the thread (the points stay)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.config.every_s + self.config.timeout_s + 5)
        self._pool.shutdown(wait=False)

    def data(self) -> dict:
        """What /dashboard/data returns: the points, endpoint states and cumulative counts."""
        with self._lock:
            points, latest = list(self.points), dict(self.latest)
        return {
            "every_s": self.config.every_s,
            "targets": [{"url": url, **status} for url, status in self.targets.items()],
            "points": points,
            "dead_letters_total": latest.get("dead_letters", {}),
            "channel_items_total": latest.get("channels", {}),
        }
