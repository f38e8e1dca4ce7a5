"""One recommendation: retrieve, drop what the user has seen, pre-rank, rank, fuse, re-rank.

Per request: the user's window counts (one Redis round trip), the user's last clicked notes
when a model reads them (one more; `FeatureClient.history`, the history the sample joiner puts
in the training samples), the channels' candidates (`serving.channels`: `retrieve_k` notes of
the two-tower index; the context channel's popular notes of the user's categories, which reads
the history if the models did not and probes the exposure filter), ONE exposure-filter call
over all of them, the unseen candidates merged by quota up to `prerank.candidates` (`rank_k`
without a pre-ranker), their counts (one round trip for those the note statistics cache does
not hold), the three-tower pre-ranker's fused score cutting them to `rank_k`
(`learners.preranker`; the fresh and context channels keep their quotas), calibrated MMoE
predictions on the kept notes' counts (`prerank.rank_from_cache`: those the pre-ranker had;
off, one more round trip), a fused score, the best `rerank.pool` with a share of the
slots reserved for the fresh and context channels (`blend_found`), and n of them chosen and
ordered by MMR with the window rules (`serving.rerank`). Each returned note carries every
stage's score (docs/funnel.md).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis

from features.client import FeatureClient
from features.errors import ExposureError
from features.exposure import ExposureFilter
from features.neighbours import NeighbourStore
from features.samples import STAT_FEATURES
from serving.channels import (
    AuthorChannel,
    CacheChannel,
    Candidates,
    Channel,
    ContextChannel,
    FreshChannel,
    MergeModel,
    NeighbourChannel,
    Request,
    TwoTowerChannel,
    load_merge_model,
    merge_found,
    merge_learned,
)
from serving.config import ChannelsConfig, ContextConfig, FusionConfig, ServingConfig
from serving.errors import DependencyError
from serving.experiments import ExperimentRouter
from serving.rerank import rerank
from serving.stats_cache import NoteStatsCache
from serving.watcher import SnapshotWatcher

STAGES = ("merged", "prerank", "rank", "rerank", "returned")
"""Funnel stages whose candidates `Recommendation.stages` counts."""
STEPS = ("user", "retrieve", "exposure", "features", "prerank", "rank", "rerank")
"""Timed steps of a request (`Recommendation.timings_ms`, plus "total")."""


@dataclass(frozen=True)
class Scored:
    """One recommended note."""

    note_id: str
    score: float
    retrieval_score: float
    """The channel's score: cosine for "two_tower", category share / rank for "context"."""
    scores: dict[str, float]
    channel: str = "two_tower"
    """The retrieval channel that proposed the note."""
    channels: list[str] = field(default_factory=list)
    """Every retrieval channel whose candidates held the note (`channel` first)."""
    prerank_score: float | None = None
    """The pre-ranker's fused score (None: no pre-ranker served this request)."""
    prerank_position: int | None = None
    """0-based place by the pre-ranker's score among the merged candidates (None: no pre-ranker)."""
    fused_position: int = 0
    """0-based place by the fused score among the ranked candidates."""
    rerank_position: int = 0
    """0-based place in the answer (after re-ranking)."""


@dataclass
class Recommendation:
    """The answer to one request."""

    user_id: str
    items: list[Scored]
    versions: dict[str, int]
    retrieved: int
    """Candidates of the two-tower channel (`retrieve_k` when the index holds that many)."""
    unseen: int
    """Of them, the ones the user was not shown."""
    ranked: int
    """Candidates of all channels the ranker scored (at most `rank_k`)."""
    exposure_filtered: bool = True
    """False when the exposure filters did not exist yet (nothing could be filtered)."""
    features_degraded: bool = False
    """True when the window counts could not be read (Redis down or slow): the models ranked
    with the priors (zero counts) instead (and without the user's history)."""
    history: int = 0
    """Clicked notes of the user the models were given (0: none stored, or no model reads it)."""
    timings_ms: dict[str, float] = field(default_factory=dict)
    candidates: dict[str, int] = field(default_factory=dict)
    """Merged candidates per retrieval channel that found them (a note found by two counts
    for both)."""
    arms: dict[str, str] = field(default_factory=dict)
    """The user's experiment arms (experiment -> arm) that made this answer; impressions of
    it carry them (`Event.arms`)."""
    stages: dict[str, int] = field(default_factory=dict)
    """Stage -> candidates it received: "merged", "prerank" (0 when skipped), "rank",
    "rerank" (the pool), "returned"."""


def fuse(preds: dict[str, np.ndarray], config: FusionConfig) -> np.ndarray:
    """Fused (n,) scores of per-task predictions (`watch_ms` becomes task "watch")."""
    terms: dict[str, np.ndarray] = {}
    for task, p in preds.items():
        if task == "watch_ms":
            minutes = np.asarray(p, dtype=np.float64) / 60_000.0
            terms["watch"] = minutes / (1.0 + minutes)
        else:
            terms[task] = np.asarray(p, dtype=np.float64)
    if config.duration_adjusted_completion and "completion" in terms and "watch" in terms:
        # A completed long note is worth more than a completed short one.
        terms["completion"] = terms["completion"] * (0.5 + terms["watch"])
    n = len(next(iter(terms.values()))) if terms else 0
    weights = {t: w for t, w in config.weights.items() if t in terms and w != 0}
    if config.formula == "weighted_sum":
        return sum((w * terms[t] for t, w in weights.items()), np.zeros(n))
    if config.formula == "product":
        return np.exp(sum((w * np.log1p(terms[t]) for t, w in weights.items()), np.zeros(n)))
    out = np.zeros(n)
    for t, w in weights.items():
        ranks = np.empty(n)
        ranks[np.argsort(-terms[t], kind="stable")] = np.arange(n)
        out += w / (config.rank_k + ranks)
    return out


class Recommender:
    """Answers `recommend(user_id, n)` from the watcher's current view, Redis and the filter."""

    def __init__(
        self,
        watcher: SnapshotWatcher,
        features: FeatureClient,
        exposure: ExposureFilter,
        config: ServingConfig,
        router: ExperimentRouter | None = None,
    ) -> None:
        self.watcher, self.features, self.exposure, self.config = (
            watcher,
            features,
            exposure,
            config,
        )
        self.router = router
        self.store = NeighbourStore(features.client, features.project)
        """Experiments: the user's arms and the settings they make (None: no experiments)."""
        self.two_tower = TwoTowerChannel()
        self.context = ContextChannel(config.context) if config.context.enabled else None
        store = self.store
        cc = config.channels
        self.channels: list[Channel] = [
            FreshChannel(store, cc),
            NeighbourChannel("itemcf", store, cc),
            NeighbourChannel("swing", store, cc),
            AuthorChannel(store, cc),
            CacheChannel(store),
        ]
        """The co-click job's channels, fresh first (each asked when its quota is > 0)."""
        self._contexts: dict[ContextConfig, ContextChannel] = {config.context: self.context}
        self._merges: dict[Path, MergeModel] = {}
        """The learnt merges of the settings' `channels.merge_model` files, read once each."""
        if cc.merge_model is not None:  # a missing or bad file fails at start, not per request
            self._merge_for(cc.merge_model)
        self._caches: dict[float, NoteStatsCache] = {}
        """The pre-ranker's note statistics, one cache per `prerank.stats_max_age_s`."""

    def _stats_cache(self, max_age_s: float) -> NoteStatsCache:
        """The note statistics cache of the pre-ranker's settings (one per distinct age)."""
        cache = self._caches.get(max_age_s)
        if cache is None:
            cache = self._caches[max_age_s] = NoteStatsCache(
                lambda ids: self.counts("note_stats", ids), len(STAT_FEATURES), max_age_s
            )
        return cache

    def _merge_for(self, path: Path | None) -> MergeModel | None:
        """The learnt merge stored at `path` (read once; None: the quota merge)."""
        if path is None:
            return None
        if path not in self._merges:
            self._merges[path] = load_merge_model(path)
        return self._merges[path]

    def _context_for(self, config: ContextConfig) -> ContextChannel | None:
        """The context channel of an arm's settings (one per distinct settings)."""
        if not config.enabled:
            return None
        if config not in self._contexts:
            self._contexts[config] = ContextChannel(config)
        return self._contexts[config]

    def counts(self, view: str, ids: list[str]) -> tuple[np.ndarray, bool]:
        """(n, F) raw window counts in `STAT_FEATURES` order (0 where nothing is stored), and
        whether they are zeros because the store could not be read (the models' priors)."""
        try:
            values, _ = self.features.read(view, ids, STAT_FEATURES)
        except (redis.RedisError, OSError):
            return np.zeros((len(ids), len(STAT_FEATURES))), True
        return np.nan_to_num(values, nan=0.0), False

    def history(self, user_id: str, length: int) -> tuple[list[str], bool]:
        """The user's last `length` clicked notes, newest first ([] when none is stored or
        `length` is 0), and whether they are [] because the store could not be read."""
        if length <= 0:
            return [], False
        try:
            stored, _ = self.features.history([user_id])
        except (redis.RedisError, OSError):
            return [], True
        return stored[0][:length], False

    def recommend(self, user_id: str, n: int) -> Recommendation:
        """Top `n` notes for `user_id` with per-task scores."""
        t = [time.perf_counter()]
        routed = self.router.route(user_id) if self.router is not None else None
        config = routed.config if routed is not None else self.config
        context = self._context_for(config.context) if routed is not None else self.context
        view = self.watcher.pinned(routed.pins) if routed is not None else self.watcher.current()
        user_counts, degraded = self.counts("user_stats", [user_id])
        user_stats = user_counts[0]  # (F,)
        length = max(view.ranker.history_len, view.retriever.history_len)
        wanted = max(
            length,
            context.config.history if context is not None else 0,
            config.channels.history,
        )
        # Counts unreadable: Redis is failing, do not spend another timeout on the history.
        history, history_degraded = self.history(user_id, wanted) if not degraded else ([], True)
        request = Request(user_id, user_stats, history[:length], view)
        t.append(time.perf_counter())
        two_tower = self.two_tower.candidates(request, config.retrieve_k)
        probe = context.probe(view) if context is not None else []
        found, channels_degraded = self.ask_channels(
            Request(user_id, user_stats, history, view), config.channels
        )
        t.append(time.perf_counter())
        union = list(dict.fromkeys([*two_tower.ids, *probe, *(i for c, _ in found for i in c.ids)]))
        filtered = True
        try:
            seen = self.exposure.seen(user_id, union) if union else []
        except ExposureError:  # no filters yet (the exposure job has not written): none seen
            seen, filtered = [False] * len(union), False
        except (redis.RedisError, OSError) as exc:  # cannot tell what was shown: refuse
            raise DependencyError(f"exposure filters unavailable (Redis: {exc})") from exc
        shown = frozenset(i for i, s in zip(union, seen, strict=True) if s)
        unseen_two_tower = Candidates(
            two_tower.channel, *_drop(two_tower, shown), two_tower.personal
        )
        lists: list[Candidates] = []
        quotas: list[int | None] = []
        rank_k = config.rank_k
        preranker = view.preranker if config.prerank.enabled else None
        merged_k = max(config.prerank.candidates, rank_k) if preranker is not None else rank_k
        context_k = min(config.context.candidates, rank_k)
        personal = False
        fresh_personal = False
        for cand, quota in found:  # fresh first: its quota is guaranteed
            lists.append(Candidates(cand.channel, *_drop(cand, shown), cand.personal))
            quotas.append(quota)
            if cand.channel == FreshChannel.name:
                fresh_personal = bool(cand.ids)
        if context is not None and context_k:
            ctx = context.candidates(Request(user_id, user_stats, history, view, shown), context_k)
            personal = ctx.personal
            at = 1 if found and found[0][0].channel == FreshChannel.name else 0
            lists.insert(at, ctx)
            quotas.insert(at, context_k)
        lists.append(unseen_two_tower)  # the two-tower channel fills up to merged_k
        quotas.append(None)
        model = self._merge_for(config.channels.merge_model)
        if model is None:
            merged = merge_found(lists, quotas, merged_k)
        else:  # the fresh and context channels' quotas stay guaranteed places
            reserved = {FreshChannel.name: config.channels.fresh, ContextChannel.name: context_k}
            merged = merge_learned(lists, model, merged_k, reserved)
        cand, cand_channels, cand_sims = merged.ids, merged.channel, merged.scores
        cand_found = merged.channels
        # the channels' guaranteed shares, kept through the pre-rank cut
        quota_of = {FreshChannel.name: config.channels.fresh, ContextChannel.name: context_k}
        t.append(time.perf_counter())
        authors, cats = view.retriever.side_info(cand)
        durations = view.retriever.durations(cand)
        pre_fused, pre_place, pre_degraded = None, None, False
        rank_stats = None  # the kept notes' counts of the pre-ranker's read, when reused
        features_s = 0.0  # the reads of the window counts, for the "features" step
        if preranker is not None and len(cand) > rank_k:
            cache = self._stats_cache(config.prerank.stats_max_age_s)
            pre_stats, pre_degraded, _ = cache.get(cand)  # (m, F), at most max_age old
            features_s += time.perf_counter() - t[-1]
            pre = preranker.score(
                user_id, cand, authors, cats, user_stats, pre_stats, durations=durations
            )
            pre_all = fuse(pre, config.fusion)
            place = np.empty(len(cand), dtype=np.int64)
            place[np.argsort(-pre_all, kind="stable")] = np.arange(len(cand))
            kept = blend_found(pre_all, cand_found, quota_of, rank_k)
            keep = kept.tolist()
            cand = [cand[j] for j in keep]
            cand_channels = [cand_channels[j] for j in keep]
            cand_found = [cand_found[j] for j in keep]
            authors, cats = [authors[j] for j in keep], [cats[j] for j in keep]
            cand_sims, durations = cand_sims[kept], durations[kept]
            pre_fused, pre_place = pre_all[kept], place[kept]
            if config.prerank.rank_from_cache:
                rank_stats = pre_stats[kept]
        t0 = time.perf_counter()
        if rank_stats is None:  # (k, F): the ranker's, fresh
            note_stats, notes_degraded = self.counts("note_stats", cand)
        else:
            note_stats, notes_degraded = rank_stats, False
        notes_degraded = notes_degraded or pre_degraded
        t1 = time.perf_counter()
        features_s += t1 - t0
        # steps: "features" the reads, "prerank" the rest up to here
        t += [t[-1] + features_s, t1]
        preds = view.ranker.score(
            user_id, cand, authors, cats, user_stats, note_stats,
            durations=durations, history=request.history,
        )  # fmt: skip
        fused = fuse(preds, config.fusion)
        t.append(time.perf_counter())
        rr = config.rerank
        pool_n = max(n, rr.pool) if rr.enabled else n
        reserved = {
            FreshChannel.name: round(config.channels.fresh_share * n) if fresh_personal else 0,
            ContextChannel.name: round(config.context.share * pool_n) if personal else 0,
        }
        mix = None
        if personal and config.context.keep_mix and reserved[ContextChannel.name]:
            _, ctx_cats = view.retriever.side_info(ctx.ids[: reserved[ContextChannel.name]])
            mix = {ContextChannel.name: (cats, dict(Counter(ctx_cats)))}  # first seen first
        pool = blend_found(fused, cand_found, reserved, pool_n, mix)
        order = pool[:n]
        if rr.enabled and len(pool):
            ids, vecs = view.retriever.item_vectors([cand[j] for j in pool.tolist()])
            row = dict(zip(ids, vecs, strict=True))
            zero = np.zeros(view.retriever.dim, dtype=np.float32)
            vectors = np.stack([row.get(cand[j], zero) for j in pool.tolist()])
            picked = rerank(
                fused[pool], vectors, [cats[j] for j in pool.tolist()],
                [authors[j] for j in pool.tolist()], n, rr,
            )  # fmt: skip
            order = pool[picked.order]
        fused_place = np.empty(len(cand), dtype=np.int64)
        fused_place[np.argsort(-fused, kind="stable")] = np.arange(len(cand))
        if config.channels.cache:
            self._cache(user_id, cand, fused, order, config.channels)
        t.append(time.perf_counter())
        items = [
            Scored(
                cand[j],
                float(fused[j]),
                float(cand_sims[j]),
                {task: float(p[j]) for task, p in preds.items()},
                cand_channels[j],
                cand_found[j],
                prerank_score=None if pre_fused is None else float(pre_fused[j]),
                prerank_position=None if pre_place is None else int(pre_place[j]),
                fused_position=int(fused_place[j]),
                rerank_position=pos,
            )
            for pos, j in enumerate(order.tolist())
        ]
        timings = {s: (b - a) * 1000 for s, a, b in zip(STEPS, t[:-1], t[1:], strict=True)}
        timings["total"] = (t[-1] - t[0]) * 1000
        return Recommendation(
            user_id,
            items,
            view.versions,
            len(two_tower.ids),
            len(unseen_two_tower.ids),
            len(cand),
            exposure_filtered=filtered,
            features_degraded=degraded or notes_degraded or history_degraded or channels_degraded,
            history=len(request.history),
            timings_ms=timings,
            candidates=_count_found(merged.channels),
            arms=dict(routed.arms) if routed is not None else {},
            stages={
                "merged": len(merged.ids),
                "prerank": len(merged.ids) if pre_fused is not None else 0,
                "rank": len(cand),
                "rerank": len(pool) if rr.enabled else 0,
                "returned": len(items),
            },
        )

    def _cache(
        self,
        user_id: str,
        cand: list[str],
        fused: np.ndarray,
        order: np.ndarray,
        config: ChannelsConfig,
    ) -> None:
        """Write the cache channel's notes: the best fused scores not returned (a failing
        Redis only loses them)."""
        rest = np.ones(len(cand), dtype=bool)
        rest[order] = False
        left = np.flatnonzero(rest)
        best = left[np.argsort(-fused[left], kind="stable")[: config.cache_size]]
        try:
            self.store.write_cache(
                user_id, [cand[j] for j in best.tolist()], fused[best].tolist(),
                config.cache_ttl_s,
            )  # fmt: skip
        except (redis.RedisError, OSError):
            return

    def candidates_by_channel(self, user_id: str, k: int) -> tuple[list[Candidates], set[str]]:
        """Every channel's candidates for `user_id` (at most `k` each, before the exposure
        filter and the merge; `streamrec candidates`), and which of them the user was shown."""
        view = self.watcher.current()
        user_counts, _ = self.counts("user_stats", [user_id])
        length = max(view.ranker.history_len, view.retriever.history_len)
        wanted = max(length, self.config.context.history, self.config.channels.history)
        history, _ = self.history(user_id, wanted)
        request = Request(user_id, user_counts[0], history, view)
        lists = [
            self.two_tower.candidates(Request(user_id, user_counts[0], history[:length], view), k)
        ]
        lists += [c.candidates(request, k) for c in self.channels]
        probe = self.context.probe(view) if self.context is not None else []
        union = list(dict.fromkeys([*probe, *(n for c in lists for n in c.ids)]))
        try:
            seen = self.exposure.seen(user_id, union) if union else []
        except ExposureError:
            seen = [False] * len(union)
        shown = {n for n, s in zip(union, seen, strict=True) if s}
        if self.context is not None:
            ctx = Request(user_id, user_counts[0], history, view, frozenset(shown))
            lists.append(self.context.candidates(ctx, k))
        return lists, shown

    def ask_channels(
        self, request: Request, quotas: ChannelsConfig
    ) -> tuple[list[tuple[Candidates, int]], bool]:
        """Each co-click channel's candidates (its quota times `overfetch`) with its quota, and
        whether some channel could not read its index (Redis failing: it gives none)."""
        found: list[tuple[Candidates, int]] = []
        degraded = False
        over = quotas.overfetch
        for channel in self.channels:
            quota = getattr(quotas, channel.name)
            if quota <= 0:
                continue
            asked = int(quota * over)
            if quotas.merge_model is not None:  # the learnt merge orders a deeper union
                asked = max(asked, quotas.merge_depth)
            try:
                found.append((channel.candidates(request, asked), quota))
            except (redis.RedisError, OSError):
                degraded = True
        return found, degraded


def _drop(cand: Candidates, shown: set[str]) -> tuple[list[str], np.ndarray]:
    """(ids, scores) of a channel's candidates without the `shown` notes."""
    keep = [j for j, i in enumerate(cand.ids) if i not in shown]
    return [cand.ids[j] for j in keep], cand.scores[keep]


def _count_found(channels: list[list[str]]) -> dict[str, int]:
    """Candidates per channel that found them."""
    out: dict[str, int] = {}
    for by in channels:
        for c in by:
            out[c] = out.get(c, 0) + 1
    return out


def blend_found(
    fused: np.ndarray,
    found: list[list[str]],
    reserved: dict[str, int],
    n: int,
    groups: dict[str, tuple[list[str], dict[str, int]]] | None = None,
) -> np.ndarray:
    """Indices of the top `n` by `fused` of which at least `reserved[c]` (as far as it has
    them) were found by channel c - reservations taken in the order of `reserved`, each its
    channel's best by `fused` not taken yet; the other slots the best of the rest; the chosen
    ones in fused order.

    `groups[c]` = (group of each candidate, slots per group): channel c's reservation is taken
    group by group instead, each group's best by `fused` up to its slots (in the order of the
    slots), then the channel's best of any group if slots are left - the channel keeps its mix
    of groups (the context channel's categories) and the ranker picks within each."""
    order = np.argsort(-fused, kind="stable").tolist()
    chosen: list[int] = []
    taken: set[int] = set()
    for channel, count in reserved.items():
        room = max(0, min(count, n - len(chosen)))
        mine: list[int] = []
        if channel in (groups or {}):
            of, slots = groups[channel]
            for group, k in slots.items():
                pick = [
                    j for j in order if of[j] == group and channel in found[j] and j not in taken
                ][: min(k, room - len(mine))]
                mine += pick
                taken.update(pick)
        rest = [j for j in order if channel in found[j] and j not in taken]
        mine += rest[: room - len(mine)]
        chosen += mine
        taken.update(mine)
    chosen += [j for j in order if j not in taken][: max(0, n - len(chosen))]
    picked = np.array(chosen, dtype=np.int64)
    return picked[np.argsort(-fused[picked], kind="stable")][:n]
