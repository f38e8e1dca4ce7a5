"""Settings of `streamrec serve`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class FusionConfig(BaseModel):
    """How per-task predictions become one ranking score."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    formula: Literal["weighted_sum", "product", "rank"] = "weighted_sum"
    """weighted_sum: sum w_t p_t; product: prod (1 + p_t)^w_t; rank: sum w_t / (k + rank_t)."""
    weights: dict[str, float] = {
        "click": 1.0,
        "like": 2.0,
        "collect": 2.0,
        "share": 3.0,
        "comment": 3.0,
        "follow": 4.0,
        "completion": 1.0,
        "watch": 0.5,
    }
    """Weight per task ("watch" is expected watch time in minutes, squashed to w/(1+w))."""
    rank_k: float = Field(default=60.0, gt=0)
    """k of the rank formula (reciprocal rank fusion)."""
    duration_adjusted_completion: bool = True
    """Completion counts as p(completion) x duration-bias correction: long notes complete less,
    so the probability is divided by the note's completion prior (from its window counts)."""


class ContextConfig(BaseModel):
    """The "popular in context" retrieval channel (`serving.channels.ContextChannel`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Ask the channel at all (off: the two-tower channel alone, as before)."""
    candidates: int = Field(default=100, ge=0)
    """Unseen candidates of the channel among the `rank_k` the ranker scores (the two-tower
    channel fills the rest)."""
    share: float = Field(default=1.0, ge=0, le=1)
    """Share of the `n` returned notes reserved for the channel's candidates (its best by the
    fused score) when the user has interacted with something; a user without any interaction
    gets no reservation (the channel's global popular notes compete in the ranking)."""
    history: int = Field(default=20, ge=0, le=200)
    """Last clicked notes of the user read (`FeatureClient.history`; the joiner keeps
    `samples.history_len`, 20)."""
    click_weight: float = Field(default=3.0, ge=0)
    """What one clicked note counts for its category, against 1 for a note shown."""
    probe_per_category: int = Field(default=200, ge=1)
    """Most clicked notes of each category tested in the exposure filter (in the request's
    one filter call) to count the notes the user was shown per category; also the channel's
    candidates (those not shown)."""
    background: float = Field(default=0.5, ge=0, le=1)
    """Share of a user's interactions assumed to follow global popularity rather than their
    interests: that much of their total, spread by the categories' click shares, is
    subtracted from their counts before the categories are weighed."""
    sharpen: float = Field(default=4.0, gt=0)
    """Categories share the channel's candidates in proportion to evidence ** sharpen."""
    keep_mix: bool = True
    """The reserved share keeps the channel's mix of categories (as many notes of each category
    as the channel's first candidates hold, the ranker choosing which); off: the channel's
    best candidates by the fused score, whatever their categories."""


class ChannelsConfig(BaseModel):
    """The channels fed by the co-click job (`streamrec run itemcf`; `serving.channels`):
    ItemCF, Swing, author and fresh notes (and the cache channel, written by the recommender).
    Each gives at most its quota of unseen candidates to the `rank_k` the ranker scores, in the
    order fresh, (context,) itemcf, swing, author, cache; the two-tower channel fills the rest.
    A note several channels found is taken once and remembers them all (`channels` of each
    item in /recommend)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    itemcf: int = Field(default=60, ge=0)
    """Quota of the ItemCF channel (0: off)."""
    swing: int = Field(default=40, ge=0)
    """Quota of the Swing channel (0: off)."""
    author: int = Field(default=20, ge=0)
    """Quota of the author channel (0: off)."""
    fresh: int = Field(default=20, ge=0)
    """Quota of the fresh-note channel (0: off)."""
    cache: int = Field(default=0, ge=0)
    """Quota of the cache channel (0: off, the default): the notes the ranker placed high in
    the user's last answer but that were not returned. On, every answer writes them."""
    cache_size: int = Field(default=100, ge=1)
    """Notes kept per user by the cache channel (the best fused scores not returned)."""
    cache_ttl_s: int = Field(default=86_400, ge=1)
    """Seconds a user's cached notes live without a new answer."""
    history: int = Field(default=20, ge=1, le=200)
    """Last clicked notes of the user whose neighbours and authors are read."""
    per_author: int = Field(default=5, ge=1)
    """Newest notes taken per author the user clicked."""
    fresh_pool: int = Field(default=500, ge=1)
    """Newest fresh notes read per request (those of the user's categories first)."""
    fresh_share: float = Field(default=0.1, ge=0, le=1)
    """Share of the `n` returned notes reserved for fresh notes (their best by the fused
    score): a new note gets impressions before its statistics can earn them."""
    overfetch: float = Field(default=2.0, ge=1)
    """Each channel is asked for its quota times this (the exposure filter drops some)."""
    merge_model: Path | None = None
    """A learnt merge (`serving.channels.MergeModel` JSON, as `bench.pipeline` writes it to
    bench/out/merge-<data set>.json): the channels' unseen candidates ordered by its score over
    their union (`merge_learned`), the fresh and context quotas kept as guaranteed places.
    None: the quota merge (`merge_found`)."""
    merge_depth: int = Field(default=600, ge=1, le=10_000)
    """With a learnt merge, candidates asked of each co-click channel (at least its quota
    times `overfetch`): the union it orders."""


class PrerankConfig(BaseModel):
    """The pre-ranking stage: the three-tower pre-ranker (`learners.preranker`) cuts the merged
    candidates down to the ranker's `ServingConfig.rank_k`."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    enabled: bool = True
    """Pre-rank when a pre-ranker snapshot is published (without one, or off, the merged
    candidates are cut to `rank_k` in merge order, as before)."""
    model: str = "preranker"
    """Snapshot model name of the pre-ranker."""
    candidates: int = Field(default=2_000, ge=1, le=20_000)
    """Merged unseen candidates handed to the pre-ranker (the ranker gets its best `rank_k`)."""
    stats_max_age_s: float = Field(default=1.0, ge=0)
    """The pre-ranker reads the candidates' window counts through an in-process cache
    (`serving.stats_cache`): a note's counts are read from Redis at most once per this many
    seconds, and are at most this much older than the store's. 0: every candidate read from
    Redis on every request."""
    rank_from_cache: bool = True
    """The ranker's `rank_k` notes take the counts the pre-ranker just read through the cache
    (at most `stats_max_age_s` old) instead of a second, fresh read of them from Redis (about
    200 rows, a third of a request's Redis work at 2,000 candidates). False: read fresh, the
    ranker's inputs exactly the store's at the request."""


class RerankConfig(BaseModel):
    """The re-ranking stage (`serving.rerank`): MMR over item vectors plus window rules."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    enabled: bool = False
    """Re-rank the fused list (off: the top n by fused score, as before). Off by default: the
    window rules and MMR pick from the best `pool` and so replace notes the context channel's
    reserved share (`context.share`, 1.0: every slot when the user has evidence, often of one
    category) put in the answer - the two policies conflict; turn it on with a `context.share`
    below 1 or category rules that allow it (docs/funnel.md)."""
    diversity: float = Field(default=0.3, ge=0, le=1)
    """MMR weight of dissimilarity: each slot takes max (1 - diversity) x relevance -
    diversity x (highest cosine to a note already placed); 0 keeps the fused order."""
    pool: int = Field(default=100, ge=1)
    """Best fused candidates the re-ranker chooses the `n` returned notes from."""
    window: int = Field(default=5, ge=1)
    """Length of the sliding window of the spreading rules."""
    max_per_category: int = Field(default=2, ge=0)
    """Most notes of one category in any `window` consecutive slots (0: no rule)."""
    max_per_author: int = Field(default=1, ge=0)
    """Most notes of one author in any `window` consecutive slots (0: no rule)."""


class DashboardConfig(BaseModel):
    """The API's /dashboard page (`serving.dashboard`): what it samples, how often, how long."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    targets: list[str] = []
    """Prometheus endpoints of the stream jobs and the online learner (`host:port` or a URL;
    `/metrics` is added to a bare `host:port`), read beside the API's own metrics; empty: the
    API's series only (freshness, requests, channel mix)."""
    every_s: float = Field(default=5.0, gt=0)
    """Seconds between samples (the sampler runs from the first /dashboard request on)."""
    points: int = Field(default=720, ge=2)
    """Samples kept (720 at 5 s: the last hour)."""
    timeout_s: float = Field(default=3.0, gt=0)
    """Longest wait for one endpoint's answer (a silent one is marked down, the rest shown; the
    online learner's takes up to 1 s: it fetches the log ends)."""


class ServingConfig(BaseModel):
    """Retrieval, ranking and API settings."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    retrieve_k: int = Field(default=1_000, ge=1, le=10_000)
    """Candidates taken from the retrieval index."""
    rank_k: int = Field(default=200, ge=1, le=5_000)
    """Unseen candidates scored by the ranker."""
    default_n: int = Field(default=20, ge=1)
    """Notes returned when the request gives no `n`."""
    max_n: int = Field(default=200, ge=1)
    """Largest `n` a request may ask for."""
    index: Literal["flat", "ivf", "hnsw"] = "flat"
    """faiss index: "flat" exact inner product (deltas applied without a rebuild), "ivf"
    IVF-Flat (deltas without a rebuild, quantizer retrained on fulls) or "hnsw" (rebuilt per
    version); chosen by bench/serving.py (docs/serving.md)."""
    nprobe: int = Field(default=64, ge=1)
    """Inverted lists searched per query by the "ivf" index."""
    ef_search: int = Field(default=128, ge=1)
    """Candidate list size of "hnsw" searches."""
    exposure_namespace: str | None = None
    """Exposure-filter namespace to read; None reads the exposure job's (`exposure.namespace`)."""
    redis_timeout_s: float = Field(default=0.1, gt=0)
    """Connect and read timeout of every Redis call: a hung Redis costs a request at most this
    per call (a request makes three), never a hang."""
    api_token_file: Path | None = None
    """File holding the bearer token every request but the probes (/healthz, /readyz, /metrics)
    must carry (`Authorization: Bearer <token>`); None: no authentication, which `streamrec
    serve` allows on a loopback address only. Also `STREAMREC_API_TOKEN_FILE`."""
    max_in_flight: int = Field(default=32, ge=1)
    """Requests served at once; more are refused at once with 503 and `Retry-After: 1`."""
    compute_slots: int = Field(default=1, ge=1)
    """/recommend calls a worker computes at once; the other admitted ones wait their turn.
    More interleave on the GIL and each runs slower: with 8 clients one slot gave 1.42x the
    throughput of one worker at one client on 2 workers, against 1.18x unbounded
    (docs/benchmarks.md, "Serving"). Scale with workers (`streamrec serve --workers`)."""
    poll_interval_s: float = Field(default=1.0, gt=0)
    """Snapshot directory check interval (announcements on Kafka wake it earlier)."""
    fusion: FusionConfig = FusionConfig()
    """Score fusion."""
    context: ContextConfig = ContextConfig()
    """The "popular in context" retrieval channel beside the two-tower one."""
    channels: ChannelsConfig = ChannelsConfig()
    """The ItemCF, Swing, author and fresh-note channels and their quotas."""
    prerank: PrerankConfig = PrerankConfig()
    """The pre-ranking stage between the merged candidates and the ranker."""
    rerank: RerankConfig = RerankConfig()
    """The re-ranking stage after the fusion."""
    experiments: Path | None = None
    """The experiments YAML (docs/experiments.md): users' arms change these settings and the
    models; None: no experiments. Edits are picked up without a restart."""
    experiments_check_s: float = Field(default=1.0, gt=0)
    """How often (at most) the experiments file's modification time is checked."""
    dashboard: DashboardConfig = DashboardConfig()
    """The /dashboard page: the job endpoints it reads, its sampling."""


class ArmOverrides(BaseModel):
    """What an experiment arm changes in serving (`overrides:` of an arm in the experiments
    YAML); each field left out keeps the configured value. Nested settings merge key by key
    (`fusion: {weights: {like: 4.0}}` changes one weight)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    ranker_model: str | None = None
    """Serve the ranker of another model name (its newest snapshot, or `ranker_version`)."""
    ranker_version: int | None = Field(default=None, ge=1)
    """Pin the ranker to this snapshot version."""
    retriever_model: str | None = None
    """Serve the retriever of another model name (its newest snapshot, or `retriever_version`)."""
    retriever_version: int | None = Field(default=None, ge=1)
    """Pin the retriever (and its index) to this snapshot version."""
    fusion: FusionConfig | None = None
    """Score fusion: formula, weights, rank_k, duration adjustment."""
    context: ContextConfig | None = None
    """The context channel: enabled, its quota (`candidates`), `share` of the slots, ..."""
    retrieve_k: int | None = Field(default=None, ge=1, le=10_000)
    """Candidates taken from the retrieval index."""
    rank_k: int | None = Field(default=None, ge=1, le=5_000)
    """Unseen candidates scored by the ranker (the channels' quotas fill it)."""
    prerank: PrerankConfig | None = None
    """The pre-ranking stage: enabled, model, candidates (docs/funnel.md)."""
    rerank: RerankConfig | None = None
    """The re-ranking stage: enabled, diversity, pool, window rules (docs/funnel.md)."""

    @property
    def pins(self) -> dict[str, tuple[str | None, int | None]]:
        """Model role -> (model name or None, version or None) where the arm changes it."""
        out = {}
        for role in ("ranker", "retriever"):
            model, version = getattr(self, f"{role}_model"), getattr(self, f"{role}_version")
            if model is not None or version is not None:
                out[role] = (model, version)
        return out

    def settings_patch(self) -> dict:
        """The fields set that change `ServingConfig` (nested: only what was given)."""
        return self.model_dump(
            exclude_unset=True,
            exclude={"ranker_model", "ranker_version", "retriever_model", "retriever_version"},
        )
