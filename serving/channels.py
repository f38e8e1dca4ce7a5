"""Retrieval channels: each turns a user into candidate notes with scores, best first.

A `Channel` answers `candidates(request, k)`; the recommender asks every channel of its funnel,
drops what the user has seen, and merges the channels' unseen candidates by quota with
de-duplication (`merge_found`, which also remembers every channel that found each
note). The channels:

- `TwoTowerChannel`: the notes of highest cosine with the user tower's vector (faiss index).
- `ContextChannel` ("popular in context"): the most clicked notes of the categories the user
  has interacted with so far - the categories of their last clicked notes
  (`FeatureClient.history`) and of the popular notes they were shown (probed in the exposure
  filter's answer for the `probe`: the most clicked notes of every category) - and the globally
  most clicked notes for a user with no interaction at all. It needs no trained row: it places
  a user after one impression, which the user tower cannot (a user's row trains only on their
  clicks). Its candidates are notes of the probe the user has not been shown. It is also the
  cold start of a new user: popular notes of their first categories.
- `NeighbourChannel` "itemcf" / "swing": the neighbours (`features.neighbours`, kept by the
  co-click job) of the user's last clicked notes, a note scored by its summed similarity to them.
- `AuthorChannel`: the newest notes of the authors of the user's last clicked notes.
- `CacheChannel`: the notes the ranker placed high in the user's last answer but that were not
  returned (written by the recommender when the channel is on; seeds 002 Part 2, 6.3).
- `FreshChannel`: notes still in their cold start (first seen recently, few impressions), those
  of the user's categories first; the recommender reserves them a share of the returned slots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from features.neighbours import NeighbourStore
from learners.inference import Retriever
from serving.config import ChannelsConfig, ContextConfig
from serving.errors import MergeModelError
from serving.watcher import ModelView


@dataclass(frozen=True)
class Request:
    """What a channel may read about the request's user (read once by the recommender)."""

    user_id: str
    user_stats: np.ndarray
    """(F,) window counts in `STAT_FEATURES` order."""
    history: list[str]
    """The user's last clicked notes, newest first, as far as the models read them."""
    view: ModelView
    """The models and index of this request."""
    shown: frozenset[str] = frozenset()
    """The notes among the channels' `probe` the user was shown (the exposure filter's answer;
    empty for a channel asked before the filter was read)."""


@dataclass(frozen=True)
class Candidates:
    """One channel's answer: note ids best first, with the channel's scores (higher better)."""

    channel: str
    ids: list[str]
    scores: np.ndarray
    personal: bool = True
    """False when the channel had nothing personal to go on (its answer is everyone's)."""

    def top(self, k: int) -> Candidates:
        """The first `k` candidates."""
        return Candidates(self.channel, self.ids[:k], self.scores[:k], self.personal)


class Channel(Protocol):
    """A retrieval channel of the funnel."""

    name: str

    def probe(self, view: ModelView) -> list[str]:
        """Notes whose exposure to the user the channel reads (`Request.shown`), checked in the
        request's one exposure-filter call."""
        ...

    def candidates(self, request: Request, k: int) -> Candidates:
        """At most `k` candidate notes for the request's user, best first."""
        ...


class TwoTowerChannel:
    """The notes of highest cosine with the user tower's vector."""

    name = "two_tower"

    def probe(self, view: ModelView) -> list[str]:  # noqa: ARG002 - the protocol's signature
        """None: the index's candidates are filtered after the one exposure call."""
        return []

    def candidates(self, request: Request, k: int) -> Candidates:
        view = request.view
        query = view.retriever.user_vector(request.user_id, request.user_stats, request.history)
        ids, sims = view.index.search(query, k)
        return Candidates(self.name, ids, np.asarray(sims, dtype=np.float64))


class CategoryPopularity:
    """The notes of each category by clicks, from one retriever snapshot (built once per view)."""

    def __init__(self, retriever: Retriever, indexed: set[str] | None = None) -> None:
        clicks = retriever.note_clicks()
        notes = [n for n in clicks if indexed is None or n in indexed]
        _, cats = retriever.side_info(notes)
        order = sorted(range(len(notes)), key=lambda j: (-clicks[notes[j]], notes[j]))
        self.by_category: dict[str, list[str]] = {}
        for j in order:
            if cats[j]:
                self.by_category.setdefault(cats[j], []).append(notes[j])
        self.overall = [notes[j] for j in order]
        self.clicks = clicks
        total = sum(clicks[n] for n in notes) or 1.0
        self.share = {
            c: sum(clicks[n] for n in ns) / total for c, ns in self.by_category.items()
        }  # each category's share of all clicks: what a user without interests would show


class ContextChannel:
    """Popular notes of the categories a user interacted with (global ones without any)."""

    name = "context"

    def __init__(self, config: ContextConfig) -> None:
        self.config = config
        self._cache: tuple[Retriever, CategoryPopularity, list[str]] | None = None

    def popularity(self, view: ModelView) -> CategoryPopularity:
        """The per-category popularity of the view's retriever (computed once per version)."""
        return self._cached(view)[1]

    def probe(self, view: ModelView) -> list[str]:
        """The `probe_per_category` most clicked notes of each category: the notes whose
        exposure counts the user's impressions per category, and the channel's candidates."""
        return self._cached(view)[2]

    def _cached(self, view: ModelView) -> tuple[Retriever, CategoryPopularity, list[str]]:
        cached = self._cache
        if cached is None or cached[0] is not view.retriever:
            indexed = set(view.retriever.item_vectors()[0])
            popular = CategoryPopularity(view.retriever, indexed)
            top = self.config.probe_per_category
            probe = [n for ns in popular.by_category.values() for n in ns[:top]]
            cached = (view.retriever, popular, probe)
            self._cache = cached
        return cached

    def interests(self, request: Request, popular: CategoryPopularity) -> dict[str, float]:
        """Category -> the user's evidence for it beyond what popularity explains (> 0 only).

        A clicked note counts `click_weight`, a shown one 1 (of the `probe_per_category` most
        clicked notes of each category, tested in the exposure filter); from each category's
        count the share of the user's total that the category's click share predicts for a
        user without interests (times `background`) is subtracted.
        """
        cfg = self.config
        counts: dict[str, float] = {}
        _, cats = request.view.retriever.side_info(request.history[: cfg.history])
        for c in cats:
            if c:
                counts[c] = counts.get(c, 0.0) + cfg.click_weight
        shown = [n for n in self.probe(request.view) if n in request.shown]
        _, cats = request.view.retriever.side_info(shown)
        for c in cats:
            if c:
                counts[c] = counts.get(c, 0.0) + 1.0
        total = sum(counts.values())
        out = {c: v - cfg.background * total * popular.share.get(c, 0.0) for c, v in counts.items()}
        return {c: v for c, v in out.items() if v > 0}

    def candidates(self, request: Request, k: int) -> Candidates:
        popular = self.popularity(request.view)
        interests = self.interests(request, popular)
        if not interests:
            probed = set(self.probe(request.view))
            ids = [n for n in popular.overall if n in probed and n not in request.shown][:k]
            scores = np.array([popular.clicks[n] for n in ids], dtype=np.float64)
            return Candidates(self.name, ids, scores, personal=False)
        weight = {c: v**self.config.sharpen for c, v in interests.items()}
        total = sum(weight.values())
        share = {c: w / total for c, w in weight.items()}
        # Each category gets slots in proportion to its share; within a category the most
        # clicked first. Interleaved so that any prefix keeps the proportions.
        # Only notes whose exposure was read (the probe): none the user has seen.
        top = self.config.probe_per_category
        pools = {
            c: [n for n in popular.by_category.get(c, [])[:top] if n not in request.shown]
            for c in share
        }
        taken = {c: 0 for c in share}
        ids: list[str] = []
        scores: list[float] = []
        while len(ids) < k:
            open_ = [c for c in share if taken[c] < len(pools[c])]
            if not open_:
                break
            c = min(open_, key=lambda c: ((taken[c] + 1) / share[c], c))
            ids.append(pools[c][taken[c]])
            scores.append(share[c] / (1.0 + taken[c]))
            taken[c] += 1
        return Candidates(self.name, ids, np.array(scores, dtype=np.float64))


class NeighbourChannel:
    """Notes similar to the user's last clicked ones: sum of their ItemCF or Swing similarity."""

    def __init__(self, kind: str, store: NeighbourStore, config: ChannelsConfig) -> None:
        self.name, self.store, self.config = kind, store, config

    def probe(self, view: ModelView) -> list[str]:  # noqa: ARG002 - the protocol's signature
        """None: its candidates are filtered in the request's one exposure call."""
        return []

    def candidates(self, request: Request, k: int) -> Candidates:
        mine = request.history[: self.config.history]
        score: dict[str, float] = {}
        for ids, sims in self.store.read(self.name, mine):
            for note, sim in zip(ids, sims, strict=True):
                score[note] = score.get(note, 0.0) + sim
        clicked = set(mine)
        best = sorted((n for n in score if n not in clicked), key=lambda n: (-score[n], n))[:k]
        return Candidates(self.name, best, np.array([score[n] for n in best], dtype=np.float64))


class AuthorChannel:
    """The newest notes of the authors of the user's last clicked notes."""

    name = "author"

    def __init__(self, store: NeighbourStore, config: ChannelsConfig) -> None:
        self.store, self.config = store, config

    def probe(self, view: ModelView) -> list[str]:  # noqa: ARG002 - the protocol's signature
        """None: its candidates are filtered in the request's one exposure call."""
        return []

    def candidates(self, request: Request, k: int) -> Candidates:
        mine = request.history[: self.config.history]
        authors, _ = request.view.retriever.side_info(mine)
        weight: dict[str, float] = {}
        for a in authors:
            if a:
                weight[a] = weight.get(a, 0.0) + 1.0
        order = sorted(weight, key=lambda a: (-weight[a], a))
        clicked = set(mine)
        score: dict[str, float] = {}
        for a, notes in zip(
            order, self.store.author_notes(order, self.config.per_author), strict=True
        ):
            for rank, (note, _) in enumerate(notes):
                if note not in clicked:
                    score[note] = max(score.get(note, 0.0), weight[a] / (1.0 + rank))
        best = sorted(score, key=lambda n: (-score[n], n))[:k]
        return Candidates(self.name, best, np.array([score[n] for n in best], dtype=np.float64))


class CacheChannel:
    """Notes ranked high for the user but not shown: the best fused scores of their last answer
    beyond the returned notes (`Recommender` writes them, `NeighbourStore.write_cache`)."""

    name = "cache"

    def __init__(self, store: NeighbourStore) -> None:
        self.store = store

    def probe(self, view: ModelView) -> list[str]:  # noqa: ARG002 - the protocol's signature
        """None: its candidates are filtered in the request's one exposure call (a note shown
        by a later answer drops out there)."""
        return []

    def candidates(self, request: Request, k: int) -> Candidates:
        ids, scores = self.store.cached(request.user_id)
        return Candidates(self.name, ids[:k], np.array(scores[:k], dtype=np.float64))


class FreshChannel:
    """Notes in their cold start: those of the user's categories first, then the least shown."""

    name = "fresh"

    def __init__(self, store: NeighbourStore, config: ChannelsConfig) -> None:
        self.store, self.config = store, config

    def probe(self, view: ModelView) -> list[str]:  # noqa: ARG002 - the protocol's signature
        """None: its candidates are filtered in the request's one exposure call."""
        return []

    def candidates(self, request: Request, k: int) -> Candidates:
        fresh = self.store.fresh(self.config.fresh_pool)
        _, cats = request.view.retriever.side_info(request.history[: self.config.history])
        mine = {c for c in cats if c}
        # in the user's categories: 1 + ...; within a tier the least shown first
        scores = [(f.category in mine) + 1.0 / (1.0 + f.impressions) for f in fresh]
        order = sorted(range(len(fresh)), key=lambda j: (-scores[j], -fresh[j].first_seen_ms))[:k]
        return Candidates(
            self.name,
            [fresh[j].note_id for j in order],
            np.array([scores[j] for j in order], dtype=np.float64),
            personal=bool(mine),
        )


@dataclass(frozen=True)
class Merged:
    """The channels' candidates merged: each note once, with every channel that found it."""

    ids: list[str]
    channel: list[str]
    """The channel each note was taken from (the first in merge order that had it)."""
    channels: list[list[str]]
    """Every channel whose candidates held the note, in merge order."""
    scores: np.ndarray
    """The taking channel's score of each note."""


def _found_by(lists: list[Candidates], ids: list[str]) -> dict[str, list[str]]:
    """Note of `ids` -> the channels of `lists` that found it, in the lists' order."""
    found: dict[str, list[str]] = {n: [] for n in ids}
    for cand in lists:
        for note in dict.fromkeys(cand.ids):
            by = found.get(note)
            if by is not None and cand.channel not in by:
                by.append(cand.channel)
    return found


def merge_found(lists: list[Candidates], quotas: list[int | None], total: int) -> Merged:
    """The channels' candidates merged in the order of `lists`: up to `quotas[i]` new notes
    from channel i (None: as many as bring the merged notes to `total`), at most `total` in
    all; each note once, remembering each channel whose candidates held it."""
    ids: list[str] = []
    channel: list[str] = []
    scores: list[float] = []
    taken: set[str] = set()
    for cand, quota in zip(lists, quotas, strict=True):
        room = total - len(ids) if quota is None else min(quota, total - len(ids))
        for note, score in zip(cand.ids, cand.scores.tolist(), strict=True):
            if room <= 0:
                break
            if note in taken:
                continue
            taken.add(note)
            ids.append(note)
            channel.append(cand.channel)
            scores.append(score)
            room -= 1
    found = _found_by(lists, ids)
    return Merged(ids, channel, [found[n] for n in ids], np.array(scores, dtype=np.float64))


def merge_calibrated(
    lists: list[Candidates], hit_rate: dict[str, np.ndarray], total: int, power: float = 1.0
) -> Merged:
    """The channels' candidates blended by estimated hit probability: a note scores the
    `power`-norm, over the channels that found it, of `hit_rate[channel][rank]` (its 0-based
    place in that channel's list; ranks past the array take its last value; a channel without
    a table adds nothing), the best `total` taken (ties: the better best rank, then note id).
    Evidence of several channels adds up (`power` 1: the sum; larger: towards the best
    channel's alone, for channels whose hits overlap) instead of the note being taken once by
    the first; each note's `channel` is the one that contributed most, `channels` every channel
    that found it (most contributing first), `scores` the combined evidence.

    The tables are learnt offline on held-out clicks (`bench.pipeline` fits them on the
    warm-up's validation tail: hits at each rank over clicked samples)."""
    evidence: dict[str, dict[str, float]] = {}
    best_rank: dict[str, int] = {}
    for cand in lists:
        table = hit_rate.get(cand.channel)
        if table is None or not len(table):
            continue
        last = len(table) - 1
        for rank, note in enumerate(dict.fromkeys(cand.ids)):
            by = evidence.setdefault(note, {})
            by[cand.channel] = by.get(cand.channel, 0.0) + float(table[min(rank, last)])
            best_rank[note] = min(best_rank.get(note, rank), rank)
    score = {
        n: float(np.sum(np.power(list(by.values()), power)) ** (1.0 / power))
        for n, by in evidence.items()
    }
    ids = sorted(score, key=lambda n: (-score[n], best_rank[n], n))[:total]
    channels = [sorted(evidence[n], key=lambda c, n=n: -evidence[n][c]) for n in ids]
    return Merged(
        ids,
        [c[0] for c in channels],
        channels,
        np.array([score[n] for n in ids], dtype=np.float64),
    )


RANK_BINS = 11
"""Rank bins of the learnt merge's features: 0, 1, 2-3, 4-7, ..., 512 and beyond."""
FEATURES_PER_CHANNEL = RANK_BINS + 3
"""Rank bins, log rank, relative score and log score (`merge_features`)."""


@dataclass(frozen=True)
class MergeModel:
    """A learnt merge (`fit_merge`): a linear score of a candidate from what each channel says
    of it, fitted so that the note the user clicks ranks first among the union."""

    channels: tuple[str, ...]
    """The channels whose answers it reads (others' candidates get no evidence)."""
    mean: np.ndarray
    """(F,) feature means of the fit (features are standardised)."""
    scale: np.ndarray
    """(F,) feature standard deviations of the fit."""
    weights: np.ndarray
    """(F,) weights of the standardised features."""

    def to_json(self) -> dict[str, object]:
        """The model as JSON-ready lists (`from_json` reads it back)."""
        return {
            "channels": list(self.channels),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weights": self.weights.tolist(),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> MergeModel:
        """The model written by `to_json`; MergeModelError when its sizes do not agree."""
        try:
            channels = tuple(str(c) for c in data["channels"])  # type: ignore[attr-defined]
            arrays = [np.asarray(data[k], dtype=np.float64) for k in ("mean", "scale", "weights")]
        except (KeyError, TypeError, ValueError) as exc:
            raise MergeModelError(
                f"not a merge model ({exc!r}): write it with MergeModel.to_json"
            ) from exc
        size = FEATURES_PER_CHANNEL * len(channels) + 1
        if any(a.shape != (size,) for a in arrays):
            raise MergeModelError(
                f"merge model for {len(channels)} channels needs {size} means, scales and "
                f"weights, got {[a.shape for a in arrays]}: refit it with fit_merge"
            )
        return cls(channels, *arrays)


def load_merge_model(path: Path) -> MergeModel:
    """The learnt merge stored at `path` (`MergeModel.to_json` as JSON)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise MergeModelError(
            f"merge model {path} not found: write it with `python -m bench.pipeline` "
            "(bench/out/merge-<data set>.json) or set serving.channels.merge_model to null"
        ) from exc
    except json.JSONDecodeError as exc:
        raise MergeModelError(f"merge model {path} is not JSON ({exc}): rewrite it") from exc
    if not isinstance(data, dict):
        raise MergeModelError(f"merge model {path} is not a JSON object: rewrite it")
    return MergeModel.from_json(data)


def merge_features(
    lists: list[Candidates], channels: tuple[str, ...]
) -> tuple[list[str], np.ndarray]:
    """The union of the lists' notes (first appearance order) and their features: per channel in
    `channels` its rank bin (one-hot), log(1 + rank), score over the list's largest |score| and
    signed log(1 + |score|) (zeros where the channel did not find the note); then the number
    of those channels that found it."""
    width = FEATURES_PER_CHANNEL
    by_name = {c.channel: c for c in lists}
    union = list(dict.fromkeys(n for c in lists for n in c.ids))
    where = {n: j for j, n in enumerate(union)}
    x = np.zeros((len(union), width * len(channels) + 1), dtype=np.float64)
    for c, name in enumerate(channels):
        cand = by_name.get(name)
        if cand is None or not cand.ids:
            continue
        first = {n: r for r, n in reversed(list(enumerate(cand.ids)))}  # a repeat: its first
        rows = np.array([where[n] for n in first])
        ranks = np.array(list(first.values()))
        s = cand.scores[ranks]
        top = float(np.max(np.abs(cand.scores))) or 1.0
        block = c * width
        bins = np.minimum(np.floor(np.log2(ranks + 1)).astype(int), RANK_BINS - 1)
        x[rows, block + bins] = 1.0
        x[rows, block + RANK_BINS] = np.log1p(ranks)
        x[rows, block + RANK_BINS + 1] = s / top
        x[rows, block + RANK_BINS + 2] = np.sign(s) * np.log1p(np.abs(s))
        x[rows, -1] += 1.0
    return union, x


def merge_learned(
    lists: list[Candidates],
    model: MergeModel,
    total: int,
    reserved: dict[str, int] | None = None,
) -> Merged:
    """The union of the channels' candidates ordered by `model`'s score, the best `total` taken;
    a channel in `reserved` keeps its first `reserved[channel]` notes among them whatever their
    score (a guaranteed share, as the fresh channel's quota), the other places go by score
    (ties: first found first). Each note's `channel` is the first list that holds it,
    `channels` every list that holds it, `scores` the model's score; best score first."""
    union, x = merge_features(lists, model.channels)
    if not union:
        return Merged([], [], [], np.zeros(0))
    score = ((x - model.mean) / model.scale) @ model.weights
    where = {n: j for j, n in enumerate(union)}
    chosen: dict[int, None] = {}
    for cand in lists:
        for note in cand.ids[: (reserved or {}).get(cand.channel, 0)]:
            if len(chosen) < total:
                chosen[where[note]] = None
    for j in np.argsort(-score, kind="stable").tolist():
        if len(chosen) >= total:
            break
        chosen.setdefault(j)
    order = sorted(chosen, key=lambda j: (-score[j], j))
    ids = [union[j] for j in order]
    found = _found_by(lists, ids)
    return Merged(ids, [found[n][0] for n in ids], [found[n] for n in ids], score[order])


@dataclass(frozen=True)
class MergeSample:
    """One user's channel answers (unseen candidates) and the notes they went on to click."""

    lists: list[Candidates]
    clicked: frozenset[str]


def fit_merge(
    samples: list[MergeSample], channels: tuple[str, ...], l2: float = 1e-3
) -> MergeModel:
    """A `MergeModel` fitted on held-out clicks by a listwise softmax: for each clicked note
    some channel found, minus the log of its softmax share among its user's union (L-BFGS,
    penalty `l2` on the weights of the standardised features)."""
    from scipy.optimize import minimize

    xs, starts, targets = [], [], []
    size = 0
    for s in samples:
        union, x = merge_features(s.lists, channels)
        hit = [j for j, n in enumerate(union) if n in s.clicked]
        if not hit:
            continue  # no channel found the clicked notes: nothing to learn from the user
        xs.append(x)
        starts.append(size)
        targets += [size + j for j in hit]
        size += len(union)
    if not targets:
        raise MergeModelError(
            "fit_merge needs samples whose clicked notes some channel found: give it more "
            "held-out clicks"
        )
    x = np.concatenate(xs)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    seg = np.repeat(np.arange(len(starts)), np.diff([*starts, size]))
    start = np.array(starts)
    pos = np.array(targets)
    per_user = np.bincount(seg[pos], minlength=len(starts)).astype(np.float64)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = z @ w
        top = np.maximum.reduceat(s, start)
        e = np.exp(s - top[seg])
        total = np.add.reduceat(e, start)
        lse = np.log(total) + top
        value = float(np.sum(lse[seg[pos]] - s[pos])) / len(pos) + l2 * float(w @ w)
        ds = per_user[seg] * e / total[seg]
        np.subtract.at(ds, pos, 1.0)
        return value, z.T @ ds / len(pos) + 2 * l2 * w

    w = minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B").x
    return MergeModel(channels, mean, scale, w)
