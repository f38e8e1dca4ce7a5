"""The FastAPI app of `streamrec serve`: /recommend, /features, /notes, /healthz, /metrics."""

import time
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Path, Query, Response
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
from features.schema import feature_types
from serving.errors import NotReadyError
from serving.recommender import Recommender


class Item(BaseModel):
    """One recommended note."""

    note_id: str
    score: float
    """Fused ranking score."""
    retrieval_score: float
    """Cosine similarity of user and note vectors."""
    scores: dict[str, float]
    """Calibrated per-task probabilities and expected `watch_ms`."""


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
    timings_ms: dict[str, float]


class FeaturesResponse(BaseModel):
    """The live window statistics of one entity."""

    entity: str
    id: str
    event_ts_ms: int
    """Event time of the stored row."""
    features: dict[str, float]


class NoteResponse(BaseModel):
    """Whether a note is in the retrieval index."""

    note_id: str
    in_index: bool
    retriever_version: int


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
        self.freshness = Gauge(
            "streamrec_feature_freshness_seconds",
            "Now minus the stats job's event-time high-water mark (NaN before it wrote one)",
            registry=r,
        )

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


def create_app(recommender: Recommender, max_n: int, default_n: int) -> FastAPI:
    """The API over a recommender (its watcher is started and stopped by the caller)."""
    app = FastAPI(title="streamrec", version="0.1.0")
    metrics = Metrics()
    reader: FeatureClient = recommender.features
    watcher = recommender.watcher

    @app.get("/recommend", response_model=RecommendResponse)
    def recommend(
        user_id: Annotated[str, Query(min_length=1, max_length=256)],
        n: Annotated[int | None, Query(ge=1, le=max_n)] = None,
    ) -> RecommendResponse:
        try:
            rec = recommender.recommend(user_id, n or default_n)
        except NotReadyError as exc:
            raise HTTPException(503, str(exc)) from None
        return RecommendResponse(
            user_id=rec.user_id,
            items=[Item(**item.__dict__) for item in rec.items],
            versions=rec.versions,
            retrieved=rec.retrieved,
            unseen=rec.unseen,
            ranked=rec.ranked,
            exposure_filtered=rec.exposure_filtered,
            timings_ms=rec.timings_ms,
        )

    @app.get("/features/{entity}/{entity_id}", response_model=FeaturesResponse)
    def features(
        entity: Literal["user", "note"],
        entity_id: Annotated[str, Path(min_length=1, max_length=256)],
    ) -> FeaturesResponse:
        names = list(feature_types(VIEW_OF[entity]))
        values, stamps = reader.read(entity, [entity_id], names)
        if stamps[0] < 0:
            raise HTTPException(404, f"no {entity} statistics stored for {entity_id!r}")
        return FeaturesResponse(
            entity=entity,
            id=entity_id,
            event_ts_ms=int(stamps[0]),
            features={k: float(v) for k, v in zip(names, values[0], strict=True)},
        )

    @app.get("/notes/{note_id}", response_model=NoteResponse)
    def note(note_id: Annotated[str, Path(min_length=1, max_length=256)]) -> NoteResponse:
        try:
            view = watcher.current()
        except NotReadyError as exc:
            raise HTTPException(503, str(exc)) from None
        return NoteResponse(
            note_id=note_id,
            in_index=note_id in view.index,
            retriever_version=view.versions["retriever"],
        )

    @app.get("/healthz")
    def healthz() -> dict:
        try:
            view = watcher.current()
        except NotReadyError as exc:
            raise HTTPException(503, str(exc)) from None
        return {"status": "ok", "versions": view.versions, "notes_indexed": len(view.index)}

    @app.get("/metrics")
    def prometheus() -> Response:
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
        hwm = reader.as_of("stats")
        metrics.freshness.set(float("nan") if hwm is None else now - hwm / 1000)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.project = reader.project
    metrics.declare([r.path for r in app.routes if isinstance(r, APIRoute)])
    app.add_middleware(_Observe, metrics=metrics)
    return app
