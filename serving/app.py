"""The FastAPI app of `streamrec serve`: /recommend, /features, /notes, /healthz, /metrics,
/dashboard."""

import contextlib
import threading
import time
from typing import Annotated, Literal

import redis
from fastapi import FastAPI, HTTPException, Path, Query, Response
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel

from features.client import VIEW_OF, FeatureClient
from features.errors import ExposureError
from features.schema import feature_types
from serving.auth import BearerAuth, send_json
from serving.config import DashboardConfig
from serving.dashboard import PAGE, Sampler
from serving.errors import DependencyError, NotReadyError
from serving.recommender import STAGES, STEPS, Recommender


class Item(BaseModel):
    """One recommended note."""

    note_id: str
    score: float
    """Fused ranking score."""
    retrieval_score: float
    """The channel's score: cosine of user and note vectors for "two_tower", category share
    over in-category popularity rank for "context"."""
    scores: dict[str, float]
    """Calibrated per-task probabilities and expected `watch_ms`."""
    channel: str = "two_tower"
    """The retrieval channel that proposed the note ("two_tower", "context", "fresh",
    "itemcf", "swing" or "author")."""
    channels: list[str] = []
    """Every retrieval channel whose candidates held the note (`channel` first)."""
    prerank_score: float | None = None
    """The three-tower pre-ranker's fused score (None: no pre-ranker served the request)."""
    prerank_position: int | None = None
    """0-based place by the pre-ranker's score among the merged candidates."""
    fused_position: int = 0
    """0-based place by `score` among the candidates the ranker scored."""
    rerank_position: int = 0
    """0-based place in this answer, after re-ranking (MMR and window rules)."""


class RecommendResponse(BaseModel):
    """The answer of /recommend."""

    user_id: str
    items: list[Item]
    versions: dict[str, int]
    """Snapshot version of each model used."""
    retrieved: int
    unseen: int
    ranked: int
    exposure_filtered: bool
    """False when the exposure filters did not exist yet (nothing could be filtered)."""
    features_degraded: bool
    """True when the window counts could not be read in time: ranked with the priors."""
    history: int = 0
    """Clicked notes of the user the models read (0: none stored, or no model reads them)."""
    timings_ms: dict[str, float]
    stages: dict[str, int] = {}
    """Stage -> candidates it received ("merged", "prerank" - 0 when skipped -, "rank",
    "rerank" - the pool -, "returned")."""
    arms: dict[str, str] = {}
    """The user's experiment arms (experiment -> arm) applied to this answer: log them with its
    impressions (`arms` of the event, docs/experiments.md)."""


class FeaturesResponse(BaseModel):
    """The live window statistics of one entity."""

    entity: str
    id: str
    event_ts_ms: int
    """Event time of the stored row."""
    features: dict[str, float]


class NoteResponse(BaseModel):
    """Whether a note is in the retrieval index (and, for a user, which channels propose it)."""

    note_id: str
    in_index: bool
    retriever_version: int
    channels: list[str] = []
    """With `user_id`: the retrieval channels whose best `k` candidates for the user hold the
    note (before the exposure filter; empty without `user_id`)."""
    shown: bool | None = None
    """With `user_id`: whether the user was shown the note (the exposure filter drops it)."""


class Metrics:
    """Prometheus metrics of one app (own registry)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "streamrec_requests", "Requests", ["endpoint", "status"], registry=r
        )
        self.latency = Histogram(
            "streamrec_request_latency_seconds",
            "Request latency",
            ["endpoint"],
            buckets=(0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.version = Gauge(
            "streamrec_snapshot_version", "Snapshot version in use", ["model"], registry=r
        )
        self.age = Gauge(
            "streamrec_snapshot_age_seconds",
            "Wall-clock seconds since the version in use was published",
            ["model"],
            registry=r,
        )
        self.indexed = Gauge("streamrec_index_notes", "Notes in the retrieval index", registry=r)
        self.carried = Gauge(
            "streamrec_snapshot_deltas_carried",
            "Deltas applied from their announcements since start (no store read)",
            registry=r,
        )
        self.freshness = Gauge(
            "streamrec_feature_freshness_seconds",
            "Now minus the stats job's event-time high-water mark (NaN before it wrote one)",
            registry=r,
        )
        self.up = Gauge(
            "streamrec_up",
            "1 if a dependency answers (redis, snapshots, exposure), else 0",
            ["dependency"],
            registry=r,
        )
        self.refused = Counter(
            "streamrec_overload_refused", "Requests refused beyond max_in_flight", registry=r
        )
        self.channel_candidates = Counter(
            "streamrec_channel_candidates",
            "Merged candidates found by each retrieval channel",
            ["channel"],
            registry=r,
        )
        self.channel_items = Counter(
            "streamrec_channel_items",
            "Returned notes by the retrieval channel that proposed them",
            ["channel"],
            registry=r,
        )
        self.arms = Counter(
            "streamrec_experiment_answers",
            "/recommend answers by experiment arm (docs/experiments.md)",
            ["experiment", "arm"],
            registry=r,
        )
        self.stage_candidates = Counter(
            "streamrec_stage_candidates",
            "Candidates each funnel stage received (merged, prerank, rank, rerank, returned)",
            ["stage"],
            registry=r,
        )
        self.stage_seconds = Counter(
            "streamrec_stage_seconds",
            "Seconds spent in each funnel stage (with _total: rate / request rate = mean)",
            ["stage"],
            registry=r,
        )

    def observe_stages(self, candidates: dict[str, int], timings_ms: dict[str, float]) -> None:
        """Count one answered request's candidates and time per stage."""
        for stage, count in candidates.items():
            self.stage_candidates.labels(stage).inc(count)
        for stage, ms in timings_ms.items():
            if stage != "total":
                self.stage_seconds.labels(stage).inc(ms / 1000.0)

    def declare(self, endpoints: list[str]) -> None:
        """Export every endpoint's series from the start (at 0), so that rates work at once.

        Also what makes the counts of one app exact when Feast has switched prometheus_client
        to multiprocess mode: a series then starts from the value its name and labels already
        have in this process, and a series created before a scrape is included in it.
        """
        for endpoint in endpoints:
            self.latency.labels(endpoint)
            for status in ("200", "404", "422", "503"):
                self.requests.labels(endpoint, status)
        for stage in STAGES:
            self.stage_candidates.labels(stage)
        for step in STEPS:
            self.stage_seconds.labels(step)


class _Observe:
    """ASGI middleware: count every request by route and status, and time it (4xx included)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = [500]

        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            endpoint = route.path if route is not None else "unmatched"
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)


class _Admit:
    """ASGI middleware: at most `limit` requests in flight; more get 503 + `Retry-After` at once.

    Probes (/healthz, /readyz, /metrics) are always admitted: they must answer under load.
    """

    PROBES = ("/healthz", "/readyz", "/metrics")

    def __init__(self, app, limit: int, metrics: Metrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics
        self.in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.PROBES:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.metrics.refused.inc()
            await send_json(
                send,
                503,
                b'{"detail":"overloaded: too many requests in flight, retry shortly"}',
                (b"retry-after", b"1"),
            )
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def _check(probe) -> tuple[bool, str]:
    try:
        return True, probe() or "ok"
    except Exception as exc:  # a readiness probe reports, it never raises
        return False, f"{type(exc).__name__}: {exc}"


def create_app(
    recommender: Recommender,
    max_n: int,
    default_n: int,
    max_in_flight: int = 32,
    api_token: str | None = None,
    dashboard: DashboardConfig | None = None,
    compute_slots: int = 1,
) -> FastAPI:
    """The API over a recommender (its watcher is started and stopped by the caller); with
    `api_token`, every request but the probes needs it as a bearer token (`serving.auth`);
    `dashboard`: what /dashboard samples (`app.state.dashboard`, the `Sampler`; its thread
    starts with the first /dashboard request, `stop()` ends it); `compute_slots`: /recommend
    calls computed at once (the others wait for a slot)."""
    app = FastAPI(title="streamrec", version="0.1.0")
    metrics = Metrics()
    reader: FeatureClient = recommender.features
    watcher = recommender.watcher
    slots = threading.BoundedSemaphore(compute_slots)

    @app.get("/recommend", response_model=RecommendResponse)
    def recommend(
        user_id: Annotated[str, Query(min_length=1, max_length=256)],
        n: Annotated[int | None, Query(ge=1, le=max_n)] = None,
    ) -> RecommendResponse:
        try:
            with slots:
                rec = recommender.recommend(user_id, n or default_n)
        except NotReadyError as exc:
            raise HTTPException(503, str(exc)) from None
        except DependencyError as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        for channel, count in rec.candidates.items():
            metrics.channel_candidates.labels(channel).inc(count)
        for item in rec.items:
            metrics.channel_items.labels(item.channel).inc()
        metrics.observe_stages(rec.stages, rec.timings_ms)
        for experiment, arm in rec.arms.items():
            metrics.arms.labels(experiment, arm).inc()
        return RecommendResponse(
            user_id=rec.user_id,
            items=[Item(**item.__dict__) for item in rec.items],
            versions=rec.versions,
            retrieved=rec.retrieved,
            unseen=rec.unseen,
            ranked=rec.ranked,
            exposure_filtered=rec.exposure_filtered,
            features_degraded=rec.features_degraded,
            history=rec.history,
            timings_ms=rec.timings_ms,
            stages=rec.stages,
            arms=rec.arms,
        )

    @app.get("/features/{entity}/{entity_id}", response_model=FeaturesResponse)
    def features(
        entity: Literal["user", "note"],
        entity_id: Annotated[str, Path(min_length=1, max_length=256)],
    ) -> FeaturesResponse:
        names = list(feature_types(VIEW_OF[entity]))
        try:
            values, stamps = reader.read(entity, [entity_id], names)
        except (redis.RedisError, OSError) as exc:
            detail = f"feature store unavailable (Redis: {exc})"
            raise HTTPException(503, detail, headers={"Retry-After": "1"}) from None
        if stamps[0] < 0:
            raise HTTPException(404, f"no {entity} statistics stored for {entity_id!r}")
        return FeaturesResponse(
            entity=entity,
            id=entity_id,
            event_ts_ms=int(stamps[0]),
            features={k: float(v) for k, v in zip(names, values[0], strict=True)},
        )

    @app.get("/notes/{note_id}", response_model=NoteResponse)
    def note(
        note_id: Annotated[str, Path(min_length=1, max_length=256)],
        user_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        k: Annotated[int, Query(ge=1, le=10_000)] = max(recommender.config.channels.fresh, 1),
    ) -> NoteResponse:
        """Whether the retrieval index holds the note; with `user_id`, which channels' best `k`
        candidates for the user hold it (default `k`: the fresh channel's quota, what the merge
        takes from it for a user who was shown none of them)."""
        try:
            view = watcher.current()
            found, shown = recommender.candidates_by_channel(user_id, k) if user_id else ([], set())
        except NotReadyError as exc:
            raise HTTPException(503, str(exc)) from None
        except DependencyError as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        except (redis.RedisError, OSError) as exc:
            raise HTTPException(503, f"Redis: {exc}", headers={"Retry-After": "1"}) from None
        return NoteResponse(
            note_id=note_id,
            in_index=note_id in view.index,
            retriever_version=view.versions["retriever"],
            channels=[c.channel for c in found if note_id in c.ids],
            shown=note_id in shown if user_id else None,
        )

    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness: the process answers (restart it if this fails)."""
        return {"status": "alive"}

    def dependencies() -> dict[str, tuple[bool, str]]:
        def snapshots() -> str:
            view = watcher.current()
            return f"versions {view.versions}, {len(view.index)} notes indexed"

        def exposure() -> str:
            try:
                _, hwm = recommender.exposure.describe()
            except ExposureError:  # reachable, no filters yet: requests are answered unfiltered
                return "no filters yet (the exposure job has not written)"
            return f"high-water mark {hwm}"

        return {
            "redis": _check(lambda: "pong" if reader.client.ping() else "no pong"),
            "snapshots": _check(snapshots),
            "exposure": _check(exposure),
        }

    @app.get("/readyz")
    def readyz(response: Response) -> dict:
        """Readiness: Redis answers, snapshots are loaded, the exposure store can be read."""
        checks = dependencies()
        ready = all(ok for ok, _ in checks.values())
        response.status_code = 200 if ready else 503
        return {
            "status": "ready" if ready else "not ready",
            "checks": {name: {"ok": ok, "detail": d} for name, (ok, d) in checks.items()},
        }

    def exposition() -> bytes:
        """The Prometheus text of this app, its gauges read now."""
        now = time.time()
        try:
            view = watcher.current()
        except NotReadyError:
            view = None
        if view is not None:
            for model, snap in view.snapshots.items():
                metrics.version.labels(model).set(snap.manifest.version)
                metrics.age.labels(model).set(now - snap.manifest.created_at_ms / 1000)
            metrics.indexed.set(len(view.index))
        metrics.carried.set(watcher.carried)
        checks = dependencies()
        for name, (ok, _) in checks.items():
            metrics.up.labels(name).set(1 if ok else 0)
        hwm = None
        if checks["redis"][0]:
            with contextlib.suppress(redis.RedisError, OSError):
                hwm = reader.as_of("stats")
        metrics.freshness.set(float("nan") if hwm is None else now - hwm / 1000)
        return generate_latest(metrics.registry)

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    sampler = Sampler(dashboard or DashboardConfig(), exposition)

    @app.get("/dashboard", response_class=HTMLResponse)
    def dashboard_page() -> HTMLResponse:
        """Freshness, throughput, dead letters, lag, AUC and channel mix over time (a page)."""
        sampler.start()
        return HTMLResponse(PAGE.read_text())

    @app.get("/dashboard/data")
    def dashboard_data() -> dict:
        """The samples the /dashboard page draws (JSON)."""
        sampler.start()
        return sampler.data()

    app.state.project = reader.project
    app.state.dashboard = sampler
    metrics.declare([r.path for r in app.routes if isinstance(r, APIRoute)])
    app.add_middleware(_Admit, limit=max_in_flight, metrics=metrics)
    if api_token is not None:
        app.add_middleware(BearerAuth, token=api_token)  # before admission: 401s take no slot
    app.add_middleware(_Observe, metrics=metrics)
    return app
