"""Baselines and metrics of bench.quality: popularity, smoothed rates, LR, ItemCF; GAUC, bootstrap.

Every baseline is used prequentially: `predict` / `user_item_scores` read only the state built
from earlier batches (and, for `WindowRateLR`, the batch's point-in-time window counts, which
are the ranker's inputs too); `update` then adds the batch. Nothing reads a batch's labels
before it has been scored.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from features.samples import STAT_FEATURES
from learners.inputs import Columns

COUNT_OF = {
    "click": "clicks",
    "like": "likes",
    "collect": "collects",
    "share": "shares",
    "comment": "comments",
    "follow": "follows",
    "completion": "completions",
}
"""Task -> the window count of its positives."""
PER = {"completion": "plays"}
"""Task -> the window count its rate is per (impressions unless named here)."""
HOUR_MS = 3_600_000


class RankedScores:
    """Labels and scores ready for AUCs under any per-sample weights (tie groups computed once)."""

    def __init__(self, y: np.ndarray, s: np.ndarray) -> None:
        self.pos = (np.asarray(y) > 0).astype(np.float64)
        _, self.group = np.unique(np.asarray(s), return_inverse=True)
        self.groups = int(self.group.max()) + 1 if len(self.group) else 0

    def auc(self, weights: np.ndarray | None = None) -> float:
        """ROC AUC with per-sample `weights` (ties count a half); NaN without both classes."""
        w = np.ones(len(self.pos)) if weights is None else np.asarray(weights, dtype=np.float64)
        pos = np.bincount(self.group, w * self.pos, self.groups)  # weight per score, ascending
        neg = np.bincount(self.group, w * (1.0 - self.pos), self.groups)
        total_pos, total_neg = pos.sum(), neg.sum()
        if total_pos <= 0 or total_neg <= 0:
            return float("nan")
        below = np.cumsum(neg) - neg
        return float((pos * (below + 0.5 * neg)).sum() / (total_pos * total_neg))


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged); NaN without both classes."""
    return RankedScores(y, s).auc()


def gauc(y: np.ndarray, s: np.ndarray, users: Sequence[str]) -> float:
    """AUC per user weighted by the user's samples; users with a single class are skipped."""
    y, s = np.asarray(y), np.asarray(s)
    _, inverse = np.unique(np.asarray(users), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0, True])
    total = weight = 0.0
    for lo, hi in itertools.pairwise(bounds):
        idx = order[lo:hi]
        value = auc(y[idx], s[idx])
        if not np.isnan(value):
            total += value * len(idx)
            weight += len(idx)
    return total / weight if weight else float("nan")


def bootstrap(
    users: Sequence[str],
    stat: Callable[[np.ndarray], float],
    resamples: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """`stat` of every sample and its percentile interval over users resampled with replacement.

    `stat` takes per-sample weights: 1 for the point estimate; in a resample, each user's
    multiplicity for all of the user's samples.
    """
    _, inverse = np.unique(np.asarray(users), return_inverse=True)
    n = int(inverse.max()) + 1
    rng = np.random.default_rng(seed)
    values = [
        stat(np.bincount(rng.integers(0, n, n), minlength=n)[inverse].astype(np.float64))
        for _ in range(resamples)
    ]
    tail = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(values, [tail, 100 - tail])
    return stat(np.ones(len(inverse))), float(lo), float(hi)


class Vocab:
    """Dense indices of ids in order of first sight."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: Sequence[str]) -> np.ndarray:
        """Indices of `ids`, giving new ids the next free ones."""
        for i in ids:
            if i not in self.index:
                self.index[i] = len(self.ids)
                self.ids.append(i)
        return np.array([self.index[i] for i in ids], dtype=np.int64)

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """Indices of `ids`; -1 for ids never added."""
        return np.array([self.index.get(i, -1) for i in ids], dtype=np.int64)


def _grow(a: np.ndarray, n: int, axis: int = 0) -> np.ndarray:
    """`a` zero-padded along `axis` to at least `n` (capacity doubled to amortise copies)."""
    if a.shape[axis] >= n:
        return a
    shape = list(a.shape)
    shape[axis] = max(n, 2 * a.shape[axis])
    out = np.zeros(shape, dtype=a.dtype)
    out[tuple(slice(0, k) for k in a.shape)] = a
    return out


def _lookup(values: np.ndarray, idx: np.ndarray, default: float | np.ndarray) -> np.ndarray:
    """values[idx] where idx >= 0, else `default`."""
    return np.where(idx >= 0, values[np.maximum(idx, 0)] if len(values) else 0.0, default)


class Popularity:
    """The note's count of past clicks, all time; the same score for every task and user."""

    def __init__(self, tasks: tuple[str, ...]) -> None:
        self.tasks = tasks
        self.notes = Vocab()
        self.clicks = np.zeros(0)

    def item_scores(self) -> np.ndarray:
        """(N,) score of every note in `notes` order."""
        return self.clicks[: len(self.notes)]

    def predict(self, b: Columns) -> dict[str, np.ndarray]:
        """Scores of the batch's notes (0 for notes never seen)."""
        score = _lookup(self.item_scores(), self.notes.get(b.note_id), 0.0)
        return dict.fromkeys(self.tasks, score)

    def user_item_scores(self, users: Sequence[str]) -> np.ndarray:
        """(len(users), N) retrieval scores: the popularity of each note, for every user."""
        return np.broadcast_to(self.item_scores(), (len(users), len(self.notes)))

    def update(self, b: Columns) -> None:
        """Count the batch's clicks."""
        idx = self.notes.add(b.note_id)
        self.clicks = _grow(self.clicks, len(self.notes))
        np.add.at(self.clicks, idx, b.labels["click"])


class RecentPopularity(Popularity):
    """The note's past clicks, each weighted 2^(-age / half-life)."""

    def __init__(self, tasks: tuple[str, ...], half_life_ms: float) -> None:
        super().__init__(tasks)
        self.half_life_ms = half_life_ms
        self.t_ref = 0
        """Time the stored sums are decayed to (the last update's latest sample)."""

    def predict(self, b: Columns) -> dict[str, np.ndarray]:
        """Decayed click sums of the batch's notes as of each sample's time (0 for new notes)."""
        stored = _lookup(self.item_scores(), self.notes.get(b.note_id), 0.0)
        score = stored * np.exp2(-(b.ts - self.t_ref) / self.half_life_ms)
        return dict.fromkeys(self.tasks, score)

    def update(self, b: Columns) -> None:
        """Decay the sums to the batch's latest time and add its clicks."""
        now = int(b.ts.max())
        self.clicks *= np.exp2(-(now - self.t_ref) / self.half_life_ms)
        self.t_ref = now
        idx = self.notes.add(b.note_id)
        self.clicks = _grow(self.clicks, len(self.notes))
        age = (now - b.ts).astype(np.float64)
        np.add.at(self.clicks, idx, b.labels["click"] * np.exp2(-age / self.half_life_ms))


class SmoothedRate:
    """The note's smoothed past rate per task: (positives + prior k) / (impressions + k).

    The prior is the global past rate of the task.
    """

    def __init__(self, tasks: tuple[str, ...], k: float) -> None:
        self.tasks = tasks
        self.k = k
        self.notes = Vocab()
        self.impressions = np.zeros(0)
        self.positives = {t: np.zeros(0) for t in tasks}

    def prior(self, task: str) -> float:
        """Global past rate of `task` (0 before any impression)."""
        seen = self.impressions.sum()
        return float(self.positives[task].sum() / seen) if seen else 0.0

    def predict(self, b: Columns) -> dict[str, np.ndarray]:
        """Smoothed rates of the batch's notes (the prior for notes never seen)."""
        idx = self.notes.get(b.note_id)
        out = {}
        for t in self.tasks:
            prior = self.prior(t)
            n = len(self.notes)
            rate = (self.positives[t][:n] + prior * self.k) / (self.impressions[:n] + self.k)
            out[t] = _lookup(rate, idx, prior)
        return out

    def update(self, b: Columns) -> None:
        """Count the batch's impressions and positives."""
        idx = self.notes.add(b.note_id)
        n = len(self.notes)
        self.impressions = _grow(self.impressions, n)
        np.add.at(self.impressions, idx, 1.0)
        for t in self.tasks:
            self.positives[t] = _grow(self.positives[t], n)
            np.add.at(self.positives[t], idx, b.labels[t])


class WindowRateLR:
    """Logistic regression per task on the user's and the note's 30-day rates of every task.

    The rates come from the window counts in the samples (the ranker's inputs), smoothed and
    log-odds; the model is fit once (`fit`).
    """

    def __init__(self, tasks: tuple[str, ...], strength: float = 2.0, l2: float = 1e-3) -> None:
        self.tasks = tasks
        self.strength = strength
        self.l2 = l2
        self.columns = np.array(
            [
                [
                    STAT_FEATURES.index(f"{COUNT_OF[t]}_30d"),
                    STAT_FEATURES.index(f"{PER.get(t, 'impressions')}_30d"),
                ]
                for t in tasks
            ]
        )  # (T, 2): numerator, denominator
        self.priors = np.full(len(tasks), 0.5)
        self.mean = np.zeros(2 * len(tasks))
        self.std = np.ones(2 * len(tasks))
        self.weights: dict[str, np.ndarray] = {}

    def features(self, b: Columns) -> np.ndarray:
        """(n, 2T + 1) standardised log-odds of the user's and the note's rates, and a bias."""
        parts = []
        for stats in (b.user_stats, b.note_stats):
            x = np.maximum(np.nan_to_num(stats.astype(np.float64)), 0.0)
            num, den = x[:, self.columns[:, 0]], x[:, self.columns[:, 1]]  # (n, T)
            rate = (num + self.priors * self.strength) / (den + self.strength)
            rate = np.clip(rate, 1e-4, 1 - 1e-4)
            parts.append(np.log(rate / (1 - rate)))
        x = np.concatenate(parts, axis=1)
        x = (x - self.mean) / self.std
        return np.concatenate([x, np.ones((len(x), 1))], axis=1)

    def fit(self, warm: Columns) -> None:
        """Priors, standardisation and coefficients from `warm` only (Newton steps, L2)."""
        self.priors = np.clip([float(warm.labels[t].mean()) for t in self.tasks], 1e-3, 1 - 1e-3)
        raw = self.features(warm)[:, :-1]
        self.mean, self.std = raw.mean(0), raw.std(0) + 1e-9
        x = self.features(warm)
        for t in self.tasks:
            self.weights[t] = _newton_logistic(x, warm.labels[t].astype(np.float64), self.l2)

    def predict(self, b: Columns) -> dict[str, np.ndarray]:
        """Per-task log-odds of the batch."""
        x = self.features(b)
        return {t: x @ self.weights[t] for t in self.tasks}


class ShorterFirst:
    """Every task scored by the note's duration known at impression time, shortest first
    (unknown durations in the middle): the practitioner's first guess for completion."""

    def __init__(self, tasks: tuple[str, ...]) -> None:
        self.tasks = tasks

    def predict(self, b: Columns) -> dict[str, np.ndarray]:
        """Per task: minus the log duration (the median known one where unknown)."""
        d = b.item_duration_ms.astype(np.float64)
        known = d > 0
        fill = float(np.median(d[known])) if known.any() else 1.0
        score = -np.log1p(np.where(known, d, fill))
        return dict.fromkeys(self.tasks, score)


def _newton_logistic(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 25) -> np.ndarray:
    """Coefficients of an L2-penalised logistic regression (bias unpenalised) by Newton's method."""
    w = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], l2 * len(x))
    penalty[-1] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + penalty * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


class ItemCF:
    """Item-based CF on past clicks: a note's score is its summed similarity to the user's notes.

    Similarity: cosine of the two notes' sets of past clickers; the user's notes are the other
    notes the user clicked before.
    """

    def __init__(self) -> None:
        self.users = Vocab()
        self.notes = Vocab()
        self.clicked = np.zeros((0, 0), dtype=np.float32)
        """(users, notes) 1 where the user clicked the note in the past."""

    def user_item_scores(self, users: Sequence[str]) -> np.ndarray:
        """(len(users), N) scores; ties (users without history too) broken by past clickers."""
        n_users, n_notes = len(self.users), len(self.notes)
        r = self.clicked[:n_users, :n_notes]
        clickers = r.sum(0)  # (N,)
        inv = np.where(clickers > 0, 1 / np.sqrt(np.maximum(clickers, 1)), 0).astype(np.float32)
        idx = self.users.get(users)
        mine = np.zeros((len(idx), n_notes), dtype=np.float32)  # (B, N) past clicks
        mine[idx >= 0] = r[idx[idx >= 0]]
        co = ((mine * inv) @ r.T) @ r  # (B, N): sum_j r_uj C_ji / sqrt(n_j)
        scores = (co * inv - mine).astype(np.float64)  # minus each clicked note's own sim 1
        return scores + 1e-9 * clickers / (clickers.max(initial=0.0) + 1.0)

    def update(self, b: Columns) -> None:
        """Add the batch's clicks (and its notes as candidates)."""
        notes = self.notes.add(b.note_id)
        clicked = np.flatnonzero(b.labels["click"] > 0)
        users = self.users.add([b.user_id[i] for i in clicked])
        self.clicked = _grow(_grow(self.clicked, len(self.users), 0), len(self.notes), 1)
        self.clicked[users, notes[clicked]] = 1.0


def recall_hits(
    scores_of: Callable[[Sequence[str]], np.ndarray],
    notes: Vocab,
    b: Columns,
    seen: dict[str, set],
    k: int,
) -> np.ndarray:
    """Per clicked sample of `b`: 1 if its note is in the user's top `k`, else 0.

    The top `k` of `scores_of(users)` over the notes in `notes`, the other notes the user clicked
    before (`seen`) excluded; NaN when there are no more than `k` notes (as the models' recall).
    """
    clicked = np.flatnonzero(b.labels["click"] > 0)
    if len(notes) <= k:
        return np.full(len(clicked), np.nan)
    users = [b.user_id[i] for i in clicked]
    targets = [b.note_id[i] for i in clicked]
    distinct, inverse = np.unique(np.array(users), return_inverse=True)
    scores = np.array(scores_of(distinct.tolist()), dtype=np.float64)[inverse]  # (C, N) copy
    for i, (u, target) in enumerate(zip(users, targets, strict=True)):
        done = [notes.index[n] for n in seen.get(u, ()) if n in notes.index and n != target]
        scores[i, done] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    wanted = notes.get(targets)
    return (top == wanted[:, None]).any(axis=1).astype(np.float64)


def add_clicks(seen: dict[str, set], b: Columns) -> None:
    """Add the batch's clicked notes to each user's set."""
    for u, n, c in zip(b.user_id, b.note_id, b.labels["click"], strict=True):
        if c:
            seen.setdefault(u, set()).add(n)


def choose_half_life(
    warm: Columns, tasks: tuple[str, ...], batch: int, half_lives_h: Sequence[float], k: int
) -> tuple[dict[float, float], dict[float, float]]:
    """Mean AUC over `tasks` and Recall@k of recent popularity per half-life (hours), on `warm`.

    The last 20 % of `warm` is replayed prequentially in batches of `batch` from the state of
    the first 80 %: only warm-up data is ever read.
    """
    cut = int(0.8 * len(warm))
    head = warm.take(np.arange(cut))
    tail = warm.take(np.arange(cut, len(warm))).batches(batch)
    ranking, retrieval = {}, {}
    for h in half_lives_h:
        model = RecentPopularity(tasks, h * HOUR_MS)
        model.update(head)
        seen: dict[str, set] = {}
        add_clicks(seen, head)
        preds: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
        hits = []
        for b in tail:
            for t, p in model.predict(b).items():
                preds[t].append(p)
            hits.append(recall_hits(model.user_item_scores, model.notes, b, seen, k))
            model.update(b)
            add_clicks(seen, b)
        labels = {t: np.concatenate([b.labels[t] for b in tail]) for t in tasks}
        ranking[h] = float(np.nanmean([auc(labels[t], np.concatenate(preds[t])) for t in tasks]))
        retrieval[h] = float(np.nanmean(np.concatenate(hits)))
    return ranking, retrieval
