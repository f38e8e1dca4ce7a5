"""The retrieval funnel on real data, prequential: Recall@50 and @200 per channel and merged.

    .venv/bin/python -m bench.pipeline [--warmup 0.3] [--batch 1024] [--limit N]
        [--two-tower/--no-two-tower] [--warm-epochs 3]

Data and protocol as `bench.quality`: MovieLens-100K and the KuaiRand subset replayed through
the real sample joiner (`join_events`), the first `warmup` share of the samples is the warm-up,
the rest is cut into batches; every channel scores each batch from the warm-up and the earlier
batches only, then learns from it. Each clicked sample is a request (as in `bench.quality`'s
recall): what it reads about its user is point-in-time - the sample's window counts (the user
tower's input, as `serving.channels.Request.user_stats`), the user's last clicks and clicked
set before its timestamp, earlier clicks of the same batch included - while the models and
lists are the batch's start's. It is a hit at K when its note is among the channel's top K for
the request, the notes the user clicked before excluded (the exposure filter's part; a repeat
click is no hit). Until 2026-12-07 a user had one request per batch, at their first click,
scored against all their clicks of the batch: the user tower then read counts up to 40 clicks
old (MovieLens users click ~39 times per batch), which cost the two-tower channel a quarter of
its recall.

Channels (the serving code where it exists: `serving.channels.NeighbourChannel`,
`FreshChannel` and `merge_found` run on in-memory copies of what the co-click job stores):
- itemcf / swing: the co-click job's own state and formulas (`streams.itemcf.ClickGraph`,
  `changed_lists`, the changed lists recomputed after each batch), the user's last
  20 distinct clicked notes giving the candidates (the history feature);
- two_tower: the retriever trained on the warm-up as `bench.quality` trains it, its ID rows
  updated online on each batch after scoring it;
- popular: recent popularity (half-life chosen on the warm-up's tail, `choose_half_life`);
- fresh: notes first seen within `fresh_ms` with fewer than `trust_impressions` impressions,
  the user's categories first.
No author channel: neither data set names authors.
Merges, every choice made on the warm-up alone: its last 20 % (the tail) is replayed from the
state of its first 80 % with a retriever trained on those 80 % only - never on the scored
stream. `merge_found` with quotas in proportion to shares of K per channel (merge order fresh,
itemcf, swing, popular, two-tower; the last fills the rest; greedy moves of 0.1 between
channels maximise the mean of Recall@50 and @200 on the tail); `merge_calibrated` (hit-rate
tables per activity bucket, channel and rank fitted on the tail); `merge_learned` (a linear
score of each candidate in the union of each channel's `DEPTH` unseen candidates, fitted by
`fit_merge` on the tail, its penalty chosen by two folds of the tail's batches; the fitted
model is written to bench/out/merge-<data set>.json, the file `serving.channels.merge_model`
reads). The best of the three on the tail is "merged".

Also measured: the co-click flow's throughput in process (TestingSource of the same raw batches)
against the ingest step alone on the same batches in the same run, and the state's size per
note. Writes bench/out/pipeline.md and bench/out/pipeline.png.

`stages(...)` is the hook for the pre-ranker and re-ranker figures (`bench.prerank`).
"""

from __future__ import annotations

import json
import pickle
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import matplotlib
import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress

from bench.baselines import HOUR_MS, RecentPopularity, choose_half_life
from bench.common import DATA
from bench.quality import _events, join_events
from features.neighbours import FreshNote
from learners.config import LearnConfig, RankerConfig, RetrieverConfig
from learners.inputs import Columns
from serving.channels import (
    Candidates,
    FreshChannel,
    MergeModel,
    MergeSample,
    NeighbourChannel,
    Request,
    fit_merge,
    merge_calibrated,
    merge_found,
    merge_learned,
)
from serving.config import ChannelsConfig
from streams.config import CoClickConfig
from streams.itemcf import ClickGraph, changed_lists

matplotlib.use("Agg")
console = Console()
OUT = Path(__file__).resolve().parent / "out"
KS = (50, 200)
MERGES = ("quota merge", "blend", "learned merge", "merged")
"""The merges reported: quotas by channel, the calibrated blend, the learnt merge, and the one
chosen on the warm-up's tail ("merged", the acceptance's)."""
DEPTH = 600
"""Unseen candidates per channel in the union the learnt merge orders (the other merges and
the channels' own recall read the first `KS[-1]`)."""
L2 = (1e-3, 1e-2)
"""The learnt merge's penalties tried on the warm-up's tail (two folds of its batches)."""
FIT_REQUESTS = 2_000
"""Most requests a `fit_merge` learns from, evenly spaced over the tail's (its cost grows with
requests x union size: MovieLens's tail has ~6,000 requests of ~1,000 candidates)."""
HISTORY = 20
CONFIG = CoClickConfig()
"""The co-click job's settings in the benchmark (its defaults)."""


class MemoryStore:
    """What the co-click job keeps in Redis, in memory (the serving channels' store API)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, tuple[list[str], list[float]]]] = {"itemcf": {}, "swing": {}}
        self.fresh_notes: list[FreshNote] = []

    def read(self, kind: str, notes: Sequence[str]) -> list[tuple[list[str], list[float]]]:
        """Each note's neighbours."""
        rows = self.rows[kind]
        return [rows.get(n, ([], [])) for n in notes]

    def fresh(self, n: int) -> list[FreshNote]:
        """The `n` newest fresh notes."""
        return self.fresh_notes[:n]


@dataclass
class CoClicks:
    """The co-click job's state, fed batch by batch, and its stored lists."""

    config: CoClickConfig
    store: MemoryStore = field(default_factory=MemoryStore)
    graph: ClickGraph = field(init=False)
    first_seen: dict[str, int] = field(default_factory=dict)
    shown: dict[str, int] = field(default_factory=dict)
    category: dict[str, str] = field(default_factory=dict)
    refresh_s: float = 0.0

    def __post_init__(self) -> None:
        self.graph = ClickGraph(self.config.user_window)

    def update(self, b: Columns) -> None:
        """Add the batch's samples (impressions) and clicks; recompute the changed lists."""
        start = time.perf_counter()
        for note, ts, cat in zip(b.note_id, b.ts.tolist(), b.category, strict=True):
            self.first_seen.setdefault(note, ts)
            self.shown[note] = self.shown.get(note, 0) + 1
            if cat:
                self.category.setdefault(note, cat)
        for i in np.flatnonzero(b.labels["click"] > 0).tolist():
            self.graph.click(b.user_id[i], b.note_id[i], int(b.ts[i]))
        cfg = self.config
        for kind, rows in changed_lists(self.graph, cfg).items():
            self.store.rows[kind].update(rows)
        now = int(b.ts.max())
        fresh = [
            n
            for n, t in self.first_seen.items()
            if t >= now - cfg.fresh_ms and self.shown[n] < cfg.trust_impressions
        ]
        fresh.sort(key=lambda n: -self.first_seen[n])
        self.store.fresh_notes = [
            FreshNote(n, self.first_seen[n], self.category.get(n, ""), "", self.shown[n])
            for n in fresh
        ]
        self.refresh_s += time.perf_counter() - start

    def bytes_per_note(self) -> float:
        """Pickled graph and lists per note."""
        size = len(pickle.dumps((self.graph, self.store.rows), protocol=pickle.HIGHEST_PROTOCOL))
        return size / max(1, len(self.first_seen))


class _Side:
    def __init__(self, category: dict[str, str]) -> None:
        self.category = category

    def side_info(self, notes: list[str]) -> tuple[list[str], list[str]]:
        return [""] * len(notes), [self.category.get(n, "") for n in notes]


def channel_lists(
    requests: dict[int, str],
    history: dict[int, list[str]],
    co: CoClicks,
    popular: RecentPopularity,
    two_tower: tuple[np.ndarray, tuple[list[str], np.ndarray]] | None,
    k: int,
) -> dict[str, dict[int, Candidates]]:
    """channel -> request -> the channel's best `k` candidates (before the seen filter).

    Args:
        requests: request key -> its user; history: request key -> the user's last clicked
            notes at the request, newest first.
        two_tower: the requests' user vectors (in `requests`' order) and the item vectors.
    """
    cfg = ChannelsConfig(history=HISTORY)
    view = SimpleNamespace(retriever=_Side(co.category))
    out: dict[str, dict[int, Candidates]] = {c: {} for c in ("itemcf", "swing", "fresh")}
    channels = {
        "itemcf": NeighbourChannel("itemcf", co.store, cfg),  # type: ignore[arg-type]
        "swing": NeighbourChannel("swing", co.store, cfg),  # type: ignore[arg-type]
        "fresh": FreshChannel(co.store, cfg.model_copy(update={"fresh_pool": k})),  # type: ignore[arg-type]
    }
    for r, u in requests.items():
        request = Request(u, np.zeros(0), history.get(r, []), view)  # type: ignore[arg-type]
        for name, channel in channels.items():
            out[name][r] = channel.candidates(request, k)
    pop = popular.item_scores()
    top = np.argsort(-pop, kind="stable")[:k]
    ids = [popular.notes.ids[j] for j in top.tolist()]
    everyone = Candidates("popular", ids, pop[top].astype(np.float64), personal=False)
    out["popular"] = dict.fromkeys(requests, everyone)
    if two_tower is not None:
        tt_users, (item_ids, items) = two_tower
        out["two_tower"] = {}
        scores = tt_users @ items.T  # (R, N)
        kk = min(k, scores.shape[1])
        for i, r in enumerate(requests):
            best = np.argpartition(-scores[i], kk - 1)[:kk] if kk else np.zeros(0, int)
            best = best[np.argsort(-scores[i, best], kind="stable")]
            out["two_tower"][r] = Candidates(
                "two_tower", [item_ids[j] for j in best.tolist()], scores[i, best].astype(float)
            )
    return out


def _unseen(cand: Candidates, done: set[str]) -> Candidates:
    keep = [j for j, n in enumerate(cand.ids) if n not in done]
    return Candidates(cand.channel, [cand.ids[j] for j in keep], cand.scores[keep], cand.personal)


def quotas(k: int, names: list[str], shares: dict[str, float]) -> list[int | None]:
    """Per channel in `names` its share of `k`; the last fills the rest."""
    return [None if j == len(names) - 1 else round(shares[n] * k) for j, n in enumerate(names)]


@dataclass
class Hits:
    """Per channel (and "merged") and K: 1/0 per clicked sample."""

    values: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    merged: list[dict[str, list[str]]] = field(default_factory=list)
    """Per batch: user -> merged candidates at the largest K of the user's first request in
    the batch (the pre-ranker's input)."""

    def add(self, name: str, k: int, hit: bool) -> None:
        """Record one sample's hit."""
        self.values.setdefault((name, k), []).append(float(hit))

    def recall(self, name: str, k: int) -> float:
        """Mean hit rate."""
        v = self.values.get((name, k), [])
        return float(np.mean(v)) if v else float("nan")


def stages(
    name: str, warm: Columns, rest: list[Columns], merged: list[dict[str, list[str]]]
) -> list[str]:
    """Hook for the later stages (the `stages` helper's `bench.prerank`): given the warm-up,
    the scored batches and per batch each clicking user's merged candidates (the retrieval's
    output, at most the largest K), the report lines of the pre-ranker and re-ranker metrics.
    Empty until `bench.prerank` provides `stages`."""
    try:
        from bench import prerank  # type: ignore[attr-defined]
    except ImportError:
        return []
    hook = getattr(prerank, "stages", None)
    return hook(name, warm, rest, merged) if hook is not None else []


@dataclass
class Scored:
    """One scored batch: per request (a clicked sample, keyed by its index in the batch) the
    unseen candidates of each channel (at most `DEPTH`), and the (request, clicked note)
    pairs."""

    lists: dict[int, list[Candidates]]
    clicks: list[tuple[int, str]]
    activity: dict[int, int]
    """Each request's activity bucket (`activity_bucket` of its user's earlier distinct clicks)."""
    users: dict[int, str] = field(default_factory=dict)
    """Each request's user."""


def score_batches(
    batches: list[Columns],
    state: tuple[CoClicks, RecentPopularity, dict[str, list[str]], dict[str, set[str]]],
    retriever: object | None,
    names: list[str],
    learn_retriever: bool,
    advance: object,
    every: int = 1,
) -> Iterator[Scored]:
    """Prequential, one request per clicked sample: each batch scored by every channel in
    `names` from `state` (and the retriever) as they were before the batch, then learnt.

    What a request reads about its user is point-in-time, as serving reads it: the sample's
    window counts (the user tower's input), the user's last clicks and clicked set before the
    sample's timestamp (earlier clicks of the same batch included: the history feature and the
    exposure filter are current within seconds; clicks at the same timestamp are not: half of
    MovieLens's clicks share their second with the user's previous one). The models and lists
    (co-click lists, popularity, the retriever's rows, the fresh notes) are the batch's start's.
    Only every `every`-th clicked sample (counted over all batches) is scored; every sample is
    learnt."""
    co, popular, history, seen = state
    count = 0
    for b in batches:
        clicked = np.flatnonzero(b.labels["click"] > 0).tolist()
        now_history = {b.user_id[i]: history.get(b.user_id[i], []) for i in clicked}
        now_seen = {u: seen.get(u, set()) for u in now_history}
        users: dict[int, str] = {}
        req_history: dict[int, list[str]] = {}
        req_seen: dict[int, set[str]] = {}
        pending: list[int] = []  # clicks at the current timestamp, not yet readable
        for i in clicked:
            if pending and b.ts[i] > b.ts[pending[0]]:
                for j in pending:
                    u, n = b.user_id[j], b.note_id[j]
                    now_history[u] = [n, *(x for x in now_history[u] if x != n)][:HISTORY]
                    now_seen[u] = now_seen[u] | {n}
                pending = []
            u = b.user_id[i]
            if count % every == 0:
                users[i], req_history[i], req_seen[i] = u, now_history[u], now_seen[u]
            count += 1
            pending.append(i)
        vectors = None
        if retriever is not None and users:
            stats = b.user_stats[list(users)]
            vectors = (
                retriever.user_vectors(list(users.values()), stats),
                retriever.item_vectors(),
            )
        longest = DEPTH + max((len(s) for s in req_seen.values()), default=0)
        lists = channel_lists(users, req_history, co, popular, vectors, longest)
        mine = {}
        for i in users:  # the user's earlier clicks excluded (a repeat click is no hit)
            unseen = [_unseen(lists[c][i], req_seen[i]) for c in names]
            mine[i] = [c.top(DEPTH) for c in unseen]
        pairs = [(i, b.note_id[i]) for i in users]
        activity = {i: activity_bucket(len(req_seen[i])) for i in users}
        yield Scored(mine, pairs, activity, users)
        _learn(b, co, popular, history, seen)
        if retriever is not None and learn_retriever:
            retriever.train_step(b, None)
        advance()


def shallow(scored: list[Scored], k: int = KS[-1]) -> list[Scored]:
    """The scored batches with each channel's list cut to its first `k`."""
    return [
        Scored(
            {r: [c.top(k) for c in cs] for r, cs in b.lists.items()}, b.clicks, b.activity, b.users
        )
        for b in scored
    ]


def merge_samples(scored: list[Scored]) -> list[MergeSample]:
    """Each request's channel lists and clicked note (`fit_merge`'s samples), at most
    `FIT_REQUESTS` of them evenly spaced."""
    out = []
    for batch in scored:
        clicked: dict[int, set[str]] = {}
        for r, n in batch.clicks:
            clicked.setdefault(r, set()).add(n)
        out += [MergeSample(cs, frozenset(clicked[r])) for r, cs in batch.lists.items()]
    return out[:: -(-len(out) // FIT_REQUESTS) or 1]


def learned_recall(scored: list[Scored], model: MergeModel) -> list[float]:
    """Recall@K (each of `KS`) of the learnt merge."""
    hits = np.zeros(len(KS))
    total = 0
    for batch in scored:
        merged = {r: merge_learned(cs, model, KS[-1]).ids for r, cs in batch.lists.items()}
        for r, target in batch.clicks:
            at = merged[r].index(target) if target in merged[r] else KS[-1]
            hits += [at < k for k in KS]
            total += 1
    return (hits / max(1, total)).tolist()


def tune_learned(scored: list[Scored], names: list[str]) -> tuple[MergeModel, float, list[float]]:
    """The learnt merge fitted on `scored` (the warm-up's tail) with the penalty of `L2` whose
    fit on one half of the batches does best on the other (mean of Recall@50 and @200 over
    both ways), that penalty and its two-fold recall (held out, unlike the other merges' tail
    figures)."""
    half = len(scored) // 2
    if not half:
        raise ValueError(
            f"the warm-up's tail has {len(scored)} batch(es); the learnt merge's folds need 2: "
            "give a larger --warmup or a smaller --batch"
        )
    folds = [(scored[:half], scored[half:]), (scored[half:], scored[:half])]
    by_l2 = {
        l2: np.mean(
            [learned_recall(b, fit_merge(merge_samples(a), tuple(names), l2)) for a, b in folds],
            axis=0,
        ).tolist()
        for l2 in L2
    }
    l2 = max(L2, key=lambda x: float(np.mean(by_l2[x])))
    return fit_merge(merge_samples(scored), tuple(names), l2), l2, by_l2[l2]


def quota_hit(lists: list[Candidates], quotas: list[int | None], k: int, target: str) -> bool:
    """Whether `target` is among the notes of `merge_found` of each list's first `k` with
    `quotas` at `k` in all (its loop, stopped at the target, without building the merge)."""
    taken: set[str] = set()
    for cand, quota in zip(lists, quotas, strict=True):
        room = k - len(taken) if quota is None else min(quota, k - len(taken))
        for note in cand.ids[:k]:
            if room <= 0:
                break
            if note in taken:
                continue
            if note == target:
                return True
            taken.add(note)
            room -= 1
    return False


def merged_recall(
    scored: list[Scored], names: list[str], shares: dict[str, float], k: int
) -> float:
    """Recall@k of the quota merge with `shares` over scored batches."""
    at = quotas(k, names, shares)
    hits = total = 0
    for batch in scored:
        hits += sum(quota_hit(batch.lists[r], at, k, n) for r, n in batch.clicks)
        total += len(batch.clicks)
    return hits / max(1, total)


ACTIVITY = (1, 5, 20, 100)
"""Edges of the users' activity buckets (earlier distinct clicks: 0, 1-4, 5-19, 20-99, 100+)."""
RANK_EDGES = (0, 1, 2, 4, 8, 16, 32, 64, 128, 200)
"""Rank bins of the hit-rate tables (a rate per bin, spread over its ranks)."""
PRIOR = 20.0
"""Pseudo clicked samples pulling a bucket's rates towards the all-users rates."""
POWERS = (1.0, 2.0, 4.0, 16.0)
"""The blend's evidence norms tried on the warm-up's tail (`merge_calibrated`'s `power`)."""


def activity_bucket(clicks: int) -> int:
    """The activity bucket of a user with `clicks` earlier distinct clicks."""
    return int(np.searchsorted(ACTIVITY, clicks, side="right"))


def fit_hit_rates(scored: list[Scored], names: list[str]) -> dict[int, dict[str, np.ndarray]]:
    """Per activity bucket and channel, the probability that the candidate at each rank is the
    clicked note: hits in each rank bin over (clicked samples x the bin's width), on `scored`
    (the warm-up's validation tail); a bucket's rates shrunk towards all users' by `PRIOR`."""
    edges = np.array(RANK_EDGES)
    width = np.diff(edges).astype(np.float64)
    buckets = len(ACTIVITY) + 1
    hits = np.zeros((buckets, len(names), len(width)))
    samples = np.zeros(buckets)
    for batch in scored:
        for r, target in batch.clicks:
            a = batch.activity[r]
            samples[a] += 1
            for c, cand in enumerate(batch.lists[r]):
                if target in cand.ids:
                    rank = cand.ids.index(target)
                    hits[a, c, np.searchsorted(edges, rank, side="right") - 1] += 1
    overall = hits.sum(axis=0) / (max(1.0, samples.sum()) * width)  # (channels, bins)
    rates = (hits + PRIOR * overall) / ((samples[:, None, None] + PRIOR) * width)
    spread = np.repeat(np.arange(len(width)), np.diff(edges))  # rank -> bin
    return {a: {c: rates[a, j, spread] for j, c in enumerate(names)} for a in range(buckets)}


def blended(
    batch: Scored, tables: dict[int, dict[str, np.ndarray]], power: float
) -> dict[int, list[str]]:
    """Each request's calibrated blend at the largest K (its first k are the blend at k)."""
    return {
        r: merge_calibrated(cands, tables[batch.activity[r]], KS[-1], power).ids
        for r, cands in batch.lists.items()
    }


def calibrated_recall(
    scored: list[Scored], tables: dict[int, dict[str, np.ndarray]], power: float
) -> list[float]:
    """Recall@K (each of `KS`) of the calibrated blend with the request's bucket's rates."""
    hits = np.zeros(len(KS))
    total = 0
    for batch in scored:
        merged = blended(batch, tables, power)
        for r, target in batch.clicks:
            at = merged[r].index(target) if target in merged[r] else KS[-1]
            hits += [at < k for k in KS]
            total += 1
    return (hits / max(1, total)).tolist()


def tune_shares(scored: list[Scored], names: list[str], step: float = 0.1) -> dict[str, float]:
    """Shares of the merged K per channel that maximise the mean of Recall@50 and @200 on
    `scored` (the warm-up's tail): greedy moves of `step` from one channel to another."""
    shares = dict.fromkeys(names, round(1.0 / len(names), 3))

    def value(sh: dict[str, float]) -> float:
        return float(np.mean([merged_recall(scored, names, sh, k) for k in KS]))

    best = value(shares)
    for _ in range(20):
        moves = []
        for a in names:
            for b in names:
                if a != b and shares[a] >= step - 1e-9:
                    moved = {**shares, a: round(shares[a] - step, 3), b: round(shares[b] + step, 3)}
                    moves.append((value(moved), moved))
        top, moved = max(moves, key=lambda m: m[0])
        if top <= best:
            break
        best, shares = top, moved
    return shares


def evaluate(
    name: str,
    cols: Columns,
    warmup: float,
    batch: int,
    two_tower: bool,
    warm_epochs: int,
    progress: Progress,
    every: int = 1,
) -> tuple[Hits, dict[str, float], list[str], dict[str, object]]:
    """Prequential recall of every channel and of both merges on `cols`. Every merge choice
    (quota shares, hit-rate tables, which merge is "merged") is made on the warm-up's last
    20 %, replayed from the state of its first 80 % with a retriever trained on those 80 % only
    and updated online on the tail as on the stream - never on the scored stream."""
    from bench.calibration import warm_up

    cut = int(len(cols) * warmup)
    warm = cols.take(np.arange(cut))
    rest = cols.take(np.arange(cut, len(cols))).batches(batch)
    tasks = ("click",)
    _, retrieval = choose_half_life(warm, tasks, batch, [1, 6, 24, 72, 168, 720], KS[0])
    half_life = max(retrieval, key=retrieval.__getitem__)
    config = LearnConfig(batch_size=batch, seed=7)

    def trained(data: Columns) -> object | None:
        if not two_tower:
            return None
        _, model = warm_up(data, config, RankerConfig(), RetrieverConfig(), 128, warm_epochs)
        model.freeze_dense()
        model.set_embedding_lr(config.online_emb_lr)
        return model

    timing: dict[str, float] = {}
    names = ["fresh", "itemcf", "swing", "popular", *(["two_tower"] if two_tower else [])]

    def fresh_state(head: Columns) -> tuple:
        st = (CoClicks(CONFIG), RecentPopularity(tasks, half_life * HOUR_MS), {}, {})
        _learn(head, *st)
        return st

    head = warm.take(np.arange(int(0.8 * len(warm))))
    tail = warm.take(np.arange(len(head), len(warm))).batches(batch)
    task = progress.add_task(f"{name} warm-up tail (merge choices)", total=len(tail))
    deep = list(score_batches(
        tail, fresh_state(head), trained(head), names, True, lambda: progress.advance(task)
    ))  # fmt: skip
    tuned = shallow(deep)
    shares = tune_shares(tuned, names)
    tables = fit_hit_rates(tuned, names)
    tail_quota = [merged_recall(tuned, names, shares, k) for k in KS]
    by_power = {pw: calibrated_recall(tuned, tables, pw) for pw in POWERS}
    power = max(POWERS, key=lambda pw: float(np.mean(by_power[pw])))
    tail_blend = by_power[power]
    model, l2, tail_learned = tune_learned(deep, names)
    (OUT / f"merge-{name.split()[0].lower()}.json").write_text(json.dumps(model.to_json()))
    on_tail = {"quota merge": tail_quota, "blend": tail_blend, "learned merge": tail_learned}
    chosen = max(on_tail, key=lambda m: float(np.mean(on_tail[m])))
    choice = {"shares": shares, "tail_quota": tail_quota, "tail_blend": tail_blend,
              "tail_learned": tail_learned, "l2": l2, "chosen": chosen, "power": power}  # fmt: skip
    progress.console.print(f"{name}: choices on the warm-up's tail: {choice}")
    state = fresh_state(warm)
    task = progress.add_task(f"{name} prequential", total=len(rest))
    advance = lambda: progress.advance(task)  # noqa: E731
    stream = score_batches(rest, state, trained(warm), names, True, advance, every)
    hits = Hits()
    for batch_deep in stream:  # one batch's lists at a time: a request's are ~50 kB
        batch_scored = shallow([batch_deep])[0]
        blend = blended(batch_scored, tables, power)
        batch_merged: dict[str, list[str]] = {}
        found = {}
        for r, cands in batch_scored.lists.items():
            lists = {"blend": blend[r]}
            lists["learned merge"] = merge_learned(batch_deep.lists[r], model, KS[-1]).ids
            for k in KS:
                for c in cands:
                    found[(r, k, c.channel)] = set(c.ids[:k])
                quota = merge_found([c.top(k) for c in cands], quotas(k, names, shares), k)
                found[(r, k, "quota merge")] = set(quota.ids)
                for m, ids in lists.items():
                    found[(r, k, m)] = set(ids[:k])
                found[(r, k, "merged")] = found[(r, k, chosen)]
            batch_merged.setdefault(batch_scored.users[r], lists.get(chosen, quota.ids))
        for r, target in batch_scored.clicks:
            for k in KS:
                for c in [*names, *MERGES]:
                    hits.add(c, k, target in found[(r, k, c)])
        hits.merged.append(batch_merged)
    co = state[0]
    timing["coclick_refresh_s"] = co.refresh_s
    timing["bytes_per_note"] = co.bytes_per_note()
    timing["half_life_h"] = half_life
    return hits, timing, stages(name, warm, rest, hits.merged), choice


def _learn(
    b: Columns,
    co: CoClicks,
    popular: RecentPopularity,
    history: dict[str, list[str]],
    seen: dict[str, set[str]],
) -> None:
    """Add a batch to every state but the retriever's."""
    co.update(b)
    popular.update(b)
    for i in np.flatnonzero(b.labels["click"] > 0).tolist():
        u, n = b.user_id[i], b.note_id[i]
        mine = [x for x in history.get(u, []) if x != n]
        history[u] = [n, *mine][:HISTORY]
        seen.setdefault(u, set()).add(n)


def throughput(events: list, repeats: int = 3) -> dict[str, float]:
    """Events/s of the co-click flow and of the ingest step alone over the same raw batches
    (in process, no broker), medians of `repeats` runs each, alternating."""
    import bytewax.operators as op
    from bytewax.testing import TestingSink, TestingSource, run_main

    from streams.config import DEFAULT_LIMITS
    from streams.ingest import ingest_flow
    from streams.itemcf import build_flow
    from tests.streams.helpers import raw_batches

    batches = raw_batches(events, 4, 2_000, topic="interactions")
    rates: dict[str, list[float]] = {"coclick": [], "ingest": []}
    for _ in range(repeats):
        start = time.perf_counter()
        run_main(build_flow(TestingSource(batches), TestingSink([]), TestingSink([]),
                            CoClickConfig(), recoverable=False))  # fmt: skip
        rates["coclick"].append(len(events) / (time.perf_counter() - start))
        flow, parts = ingest_flow(
            "bare", TestingSource(batches), TestingSink([]), limits=DEFAULT_LIMITS,
            lateness_ms=None, shard=lambda cols, _hwm: [("all", len(cols.ts))], dedupe=True,
            recoverable=False,
        )  # fmt: skip
        op.output("out", parts, TestingSink([]))
        start = time.perf_counter()
        run_main(flow)
        rates["ingest"].append(len(events) / (time.perf_counter() - start))
    return {k: float(np.median(v)) for k, v in rates.items()}


def report(
    name: str,
    cols: Columns,
    hits: Hits,
    timing: dict[str, float],
    names: list[str],
    choice: dict[str, object],
) -> list[str]:
    """The data set's section: the recall table and the acceptance line."""
    tail = " / ".join(f"{x:.4f}" for x in choice["tail_quota"])  # type: ignore[union-attr]
    tail_blend = " / ".join(f"{x:.4f}" for x in choice["tail_blend"])  # type: ignore[union-attr]
    tail_learned = " / ".join(f"{x:.4f}" for x in choice["tail_learned"])  # type: ignore[union-attr]
    lines = [
        f"## {name}",
        "",
        f"{len(cols):,} samples; {len(hits.values.get(('merged', KS[0]), [])):,} clicked samples "
        f"scored; recent popularity half-life {timing['half_life_h']:g} h (chosen on the "
        f"warm-up's tail); co-click recomputation {timing['coclick_refresh_s']:.1f} s in all, "
        f"state {timing['bytes_per_note']:,.0f} bytes per note (pickled graph + lists). On the "
        f"warm-up's tail (retriever trained on the warm-up's head only): quota shares "
        f"{choice['shares']} give Recall@{KS[0]}/@{KS[-1]} {tail}, the calibrated blend "
        f"(power {choice['power']:g}) {tail_blend}, the learnt merge of each channel's "
        f"{DEPTH} (penalty {choice['l2']:g}; fitted on one half of the tail's batches, "
        f"measured on the other, both ways) {tail_learned}; merged = the {choice['chosen']}.",
        "",
        "| channel | " + " | ".join(f"Recall@{k}" for k in KS) + " |",
        "|---" * (len(KS) + 1) + "|",
    ]
    for c in [*names, *MERGES]:
        lines.append(f"| {c} | " + " | ".join(f"{hits.recall(c, k):.4f}" for k in KS) + " |")
    lines.append("")
    for k in KS:
        best = max(names, key=lambda c: hits.recall(c, k))
        ratio = hits.recall("merged", k) / hits.recall(best, k)
        verdict = "met" if ratio >= 1.10 else "not met"
        lines.append(
            f"- Recall@{k}: merged {hits.recall('merged', k):.4f} = {ratio:.2f}x the best single "
            f"channel ({best}, {hits.recall(best, k):.4f}); acceptance (>= 1.10x) {verdict}"
        )
    lines.append("")
    return lines


def main(
    warmup: float = typer.Option(0.3, help="Share of each stream used as the warm-up."),
    batch: int = typer.Option(1024, help="Samples per prequential batch."),
    limit: int | None = typer.Option(None, help="Cap on source rows (quick runs)."),
    two_tower: bool = typer.Option(True, help="Include the two-tower channel (trains it)."),
    warm_epochs: int = typer.Option(3, help="Passes of the two-tower warm-up training."),
    repeats: int = typer.Option(3, help="Runs of each throughput measurement (0: none)."),
    recall: bool = typer.Option(True, help="Measure the channels' recall (off: throughput only)."),
    only: str | None = typer.Option(None, help="Only the data set whose name starts with this."),
    every: int = typer.Option(
        1, help="Score every n-th clicked sample of the stream (all are learnt; quicker runs)."
    ),
) -> None:
    """Recall per channel and merged on MovieLens-100K and the KuaiRand subset; throughput."""
    import matplotlib.pyplot as plt
    import torch

    from streams.sources.kuairand import KuaiRandSource
    from streams.sources.movielens import MovieLensSource

    torch.set_num_threads(LearnConfig().threads)
    OUT.mkdir(parents=True, exist_ok=True)
    sets = {
        "MovieLens-100K": MovieLensSource(DATA / "movielens-100k" / "u.data", limit=limit),
        "KuaiRand subset": KuaiRandSource(
            DATA / "kuairand-27k-likehate" / "processed_standard_kcore_15.tsv", limit=limit
        ),
    }
    names = ["fresh", "itemcf", "swing", "popular", *(["two_tower"] if two_tower else [])]
    lines = [
        "# Retrieval channels (bench.pipeline)",
        "",
        "Prequential: each batch is scored by every channel from the warm-up and earlier batches "
        "only, then learnt. Recall@K over the clicked samples, the user's earlier clicks "
        "excluded. Merges: quotas (shares of K per channel, the last channel fills the rest), "
        "the calibrated blend (per activity bucket, channel and rank the hit rate; a note "
        "scores the sum over the channels that found it) and the learnt merge (a linear score "
        f"of each channel's rank, score and agreement over the union of each channel's {DEPTH}, "
        "fitted by a softmax over each user's union; `serving.channels.fit_merge`), all fitted "
        "on the warm-up's tail, the best there reported as merged.",
        "",
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    with Progress(console=console) as progress, tempfile.TemporaryDirectory():
        for ax, (name, source) in zip(axes, sets.items(), strict=True):
            if only is not None and not name.startswith(only):
                continue
            progress.console.print(f"{name}: joining events")
            events = _events(source)
            cols = join_events(events)
            if recall:
                hits, timing, extra, choice = evaluate(
                    name, cols, warmup, batch, two_tower, warm_epochs, progress, every
                )
                section = report(name, cols, hits, timing, names, choice) + extra
                progress.console.print("\n".join(section), markup=False, highlight=False)
                lines += section
                x = np.arange(len(names) + len(MERGES))
                for j, k in enumerate(KS):
                    ax.bar(x + 0.4 * j, [hits.recall(c, k) for c in [*names, *MERGES]], 0.4,
                           label=f"Recall@{k}")  # fmt: skip
                ax.set_xticks(x + 0.2, [*names, *MERGES], rotation=30)
                ax.set_title(f"{name}: recall per channel (prequential)")
                ax.legend()
            if repeats:
                rates = throughput(events, repeats)
                lines += [
                    f"- co-click flow in process: {rates['coclick']:,.0f} events/s, "
                    f"{rates['coclick'] / rates['ingest']:.2f}x the ingest step alone on the "
                    f"same batches ({rates['ingest']:,.0f} events/s; medians of {repeats}, same "
                    "run)",
                    "",
                ]
    text = "\n".join(lines)
    if recall:
        fig.tight_layout()
        fig.savefig(OUT / "pipeline.png", dpi=120)
        (OUT / "pipeline.md").write_text(text + "\n")
    console.print(text, markup=False, highlight=False, soft_wrap=True)
    console.print(f"plot: {OUT / 'pipeline.png'}")


if __name__ == "__main__":
    typer.run(main)
