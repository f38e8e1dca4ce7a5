"""Shared fixtures of the learner and serving tests: synthetic samples with a learnable click
signal, training-samples messages, a controlled clock, published trained models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from features.samples import STAT_FEATURES, SampleBatch, encode_batch
from learners.config import LearnConfig, RankerConfig, RetrieverConfig
from learners.export import snapshot_exports
from learners.full import load_or_create, prerank_pass, train_pass
from learners.inputs import LABEL_COLUMNS, Columns, F
from learners.online import Message
from learners.preranker import PreRankerConfig
from learners.snapshots import SnapshotConfig, SnapshotWriter
from learners.training import PreRankerState


def true_click_probability(users: np.ndarray, notes: np.ndarray, seed: int = 0) -> np.ndarray:
    """p(click) from hidden user and note factors (a fixed function of the seed)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(1000, 4))
    v = rng.normal(size=(5000, 4))
    bias = rng.normal(-2.2, 0.6, size=5000)
    z = bias[notes] + 0.8 * (u[users] * v[notes]).sum(axis=1)
    return 1.0 / (1.0 + np.exp(-z))


def window_stats(rng: np.random.Generator, ctr: np.ndarray, impressions: float) -> np.ndarray:
    """(m, F) window counts consistent with each row's click-through rate `ctr` (m,).

    Impressions are Poisson per window (growing with the window), clicks binomial at `ctr`,
    the other actions binomial on the clicks, plays = clicks, watch time per play ~ 30 s.
    """
    m = len(ctr)
    out = np.zeros((m, F), dtype=np.float32)
    for scale, window in ((1, "1h"), (4, "1d"), (12, "7d"), (24, "30d")):
        imp = rng.poisson(impressions * scale, m)
        clicks = rng.binomial(imp, ctr)
        counts = {
            "impressions": imp,
            "clicks": clicks,
            "plays": clicks,
            "likes": rng.binomial(clicks, 0.3),
            "completions": rng.binomial(clicks, 0.5),
            "hides": rng.binomial(imp - clicks, 0.02),
            "watch_ms": clicks * 30_000,
        }
        for name, values in counts.items():
            out[:, STAT_FEATURES.index(f"{name}_{window}")] = values
    return out


def synthetic(
    n: int,
    seed: int = 1,
    users: int = 200,
    notes: int = 400,
    keep_rate: float = 1.0,
    t0: int = 1_000_000,
    truth_seed: int = 0,
) -> tuple[Columns, np.ndarray]:
    """`n` impressions (before down-sampling) -> kept samples and their true click probability."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, n)
    v = rng.zipf(1.3, n) % notes
    p = true_click_probability(u, v, truth_seed)
    grid_u, grid_v = np.meshgrid(np.arange(users), np.arange(notes), indexing="ij")
    every = true_click_probability(grid_u.ravel(), grid_v.ravel(), truth_seed).reshape(users, notes)
    user_ctr, note_ctr = every.mean(axis=1), every.mean(axis=0)  # what history would show
    click = rng.random(n) < p
    kept = click | (rng.random(n) < keep_rate)
    u, v, p, click = u[kept], v[kept], p[kept], click[kept]
    m = len(u)
    labels = {k: np.zeros(m, np.float32) for k in LABEL_COLUMNS}
    labels["click"] = click.astype(np.float32)
    labels["like"] = (click & (rng.random(m) < 0.3)).astype(np.float32)
    labels["completion"] = (click & (rng.random(m) < 0.5)).astype(np.float32)
    cols = Columns(
        user_id=[f"u{i}" for i in u],
        note_id=[f"n{i}" for i in v],
        author_id=[f"a{i % 50}" for i in v],
        category=[f"c{i % 7}" for i in v],
        ts=t0 + np.arange(m, dtype=np.int64) * 1000,
        position=rng.integers(-1, 8, m),
        user_stats=window_stats(rng, user_ctr[u], 1.0),
        note_stats=window_stats(rng, note_ctr[v], 10.0),
        labels=labels,
        watch_ms=np.where(click, rng.exponential(40_000, m), 0).astype(np.float32),
        keep_rate=np.where(click, 1.0, keep_rate).astype(np.float32),
    )
    return cols, p


def with_history(cols: Columns, length: int) -> Columns:
    """`cols` (in time order) with each sample's `history` as the joiner would give it: the
    user's distinct notes clicked in earlier samples, newest first, at most `length`."""
    past: dict[str, list[str]] = {}
    history = []
    for user, note, click in zip(cols.user_id, cols.note_id, cols.labels["click"], strict=True):
        mine = past.setdefault(user, [])
        history.append(mine[::-1][:length])
        if click:
            if note in mine:
                mine.remove(note)
            mine.append(note)
    return Columns(**{**cols.__dict__, "history": history})


def to_batch(cols: Columns, batch_id: str) -> SampleBatch:
    """A `SampleBatch` of the rows of `cols` (as the joiner would send them)."""
    ids = [f"{batch_id}-{j}" for j in range(len(cols))]
    samples = cols.to_samples(ids, duration_ms=60_000)
    return SampleBatch(batch_id, 0, int(cols.ts.max()), samples)


CONFIG = LearnConfig(batch_size=256, admit_after=1)
"""Learner settings of the tests (every ID admitted at once)."""


class Clock:
    """A controlled monotonic clock: tests move `now`."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def publish_trained(root: Path | str, history: int = 0, preranker: bool = False) -> SnapshotConfig:
    """Full-train both models on a small fixture and publish them (what `learn full` does)
    under `root` (a directory, or a store URL: `snapshots.url`); with `history` > 0 both read
    that many clicked notes (samples carry their history), else they have the default
    configurations; with `preranker` the three-tower pre-ranker too (distilled from the
    ranker), as model "preranker"."""
    where = (
        {"root": root} if isinstance(root, Path) else {"root": Path("/nonexistent"), "url": root}
    )
    snapshots = SnapshotConfig(**where, delta_every_s=10, full_every_s=3600)
    configs = (RankerConfig(history=history), RetrieverConfig(history=history))
    ranker, retriever, _, _ = load_or_create(CONFIG, snapshots, *(configs if history else ()))
    cols, _ = synthetic(4_000, seed=11)
    if history:
        cols = with_history(cols, history)
    train_pass(ranker, retriever, cols, CONFIG)
    states: list[tuple[str, object]] = [("ranker", ranker), ("retriever", retriever)]
    if preranker:
        pre = PreRankerState.create(PreRankerConfig(distill=1.0), CONFIG.embedding(16), seed=7)
        prerank_pass(pre, cols, CONFIG, teacher=ranker)
        states.append(("preranker", pre))
    for name, state in states:
        tables, dense = state.full_state()
        SnapshotWriter(snapshots.location, name, snapshots).publish_full(
            tables, dense, state.hwm_ms, state.meta({"offsets": {}}), snapshot_exports(state)
        )
    return snapshots


def messages(seed: int, n: int, users: int = 200, t0: int = 10**9) -> list[Message]:
    """`training-samples` messages of `n` synthetic impressions, 100 samples each."""
    cols, _ = synthetic(n, seed=seed, users=users, t0=t0)
    return [
        Message(0, i, encode_batch(to_batch(b, f"b{seed}-{i}")))
        for i, b in enumerate(cols.batches(100))
    ]
