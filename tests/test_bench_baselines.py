"""bench.baselines: GAUC, the user bootstrap, ItemCF and the prequential discipline of baselines."""

from __future__ import annotations

import numpy as np
import pytest
from rich.progress import Progress

from bench.baselines import (
    HOUR_MS,
    ItemCF,
    Popularity,
    RankedScores,
    RecentPopularity,
    SmoothedRate,
    Vocab,
    WindowRateLR,
    add_clicks,
    auc,
    bootstrap,
    gauc,
    recall_hits,
)
from bench.quality import run_baselines, stream
from features.samples import STAT_FEATURES
from learners.inputs import LABEL_COLUMNS, Columns

T0 = 1_700_000_000_000


def make_cols(
    users: list[str],
    notes: list[str],
    click: list[int],
    like: list[int] | None = None,
    ts: list[int] | None = None,
    stats: np.ndarray | None = None,
) -> Columns:
    """Samples with the given ids and labels, one second apart unless `ts` is given."""
    n = len(users)
    labels = {k: np.zeros(n, np.float32) for k in LABEL_COLUMNS}
    labels["click"] = np.array(click, np.float32)
    labels["like"] = np.array(like if like is not None else [0] * n, np.float32)
    zeros = np.zeros((n, len(STAT_FEATURES)), np.float32)
    return Columns(
        user_id=list(users),
        note_id=list(notes),
        author_id=[""] * n,
        category=[""] * n,
        ts=np.array(ts, np.int64) if ts is not None else T0 + 1000 * np.arange(n, dtype=np.int64),
        position=np.zeros(n, np.int64),
        user_stats=zeros if stats is None else stats,
        note_stats=zeros if stats is None else stats,
        labels=labels,
        watch_ms=np.zeros(n, np.float32),
        keep_rate=np.ones(n, np.float32),
    )


def test_auc_averages_ties() -> None:
    assert auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    assert auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.3, 0.3])) == pytest.approx(0.875)
    assert np.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_gauc_matches_a_hand_computed_value() -> None:
    # a: 3 samples, AUC 1; b: 4 samples, 1 of 4 pairs ordered, AUC 0.25; c: one class, skipped
    users = ["a", "b", "c", "a", "b", "b", "c", "a", "b"]
    y = np.array([1, 1, 1, 0, 0, 1, 1, 0, 0])
    s = np.array([0.9, 0.2, 0.5, 0.1, 0.8, 0.6, 0.7, 0.5, 0.4])
    assert gauc(y, s, users) == pytest.approx((3 * 1.0 + 4 * 0.25) / 7)


def test_weighted_auc_is_the_auc_of_the_replicated_samples() -> None:
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 40), rng.integers(0, 6, 40).astype(float)
    w = rng.integers(0, 4, 40)
    assert RankedScores(y, s).auc(w) == pytest.approx(auc(np.repeat(y, w), np.repeat(s, w)))


def test_bootstrap_interval_contains_the_point_estimate() -> None:
    rng = np.random.default_rng(1)
    users = [f"u{i}" for i in rng.integers(0, 30, 600)]
    y = rng.integers(0, 2, 600)
    good, noisy = y + rng.normal(0, 0.8, 600), y + rng.normal(0, 1.5, 600)
    a, b = RankedScores(y, good), RankedScores(y, noisy)
    point, lo, hi = bootstrap(users, lambda w: a.auc(w) - b.auc(w), resamples=200)
    assert point == pytest.approx(auc(y, good) - auc(y, noisy))
    assert lo < point < hi
    assert lo > 0  # the less noisy score is better for sure


def test_bootstrap_interval_is_degenerate_when_every_user_is_identical() -> None:
    y, s1, s2 = [1, 0, 1, 0, 0], [0.9, 0.3, 0.4, 0.5, 0.1], [0.2, 0.3, 0.8, 0.1, 0.6]
    users = [f"u{i}" for i in range(12) for _ in y]
    a = RankedScores(np.tile(y, 12), np.tile(s1, 12))
    b = RankedScores(np.tile(y, 12), np.tile(s2, 12))
    point, lo, hi = bootstrap(users, lambda w: a.auc(w) - b.auc(w), resamples=100)
    assert point == pytest.approx(auc(y, s1) - auc(y, s2))
    assert hi - lo == pytest.approx(0.0, abs=1e-12)
    assert lo == pytest.approx(point, abs=1e-12)


def _toy_log() -> Columns:
    """u1, u2 click a and b; u3 a and c; u6..u8 c only; u9 d, e, f (fillers)."""
    clicks = [
        ("u1", "a"),
        ("u1", "b"),
        ("u2", "a"),
        ("u2", "b"),
        ("u3", "a"),
        ("u3", "c"),
        ("u6", "c"),
        ("u7", "c"),
        ("u8", "c"),
        ("u9", "d"),
        ("u9", "e"),
        ("u9", "f"),
        ("u5", "a"),
    ]
    return make_cols([u for u, _ in clicks], [n for _, n in clicks], [1] * len(clicks))


def test_itemcf_recommends_the_co_clicked_note_first() -> None:
    log = _toy_log()
    cf, pop = ItemCF(), Popularity(("click",))
    cf.update(log)
    pop.update(log)
    scores = cf.user_item_scores(["u5"])[0]
    best = [n for n in cf.notes.ids if n != "a"]  # u5's own click is excluded in retrieval
    best.sort(key=lambda n: -scores[cf.notes.index[n]])
    assert best[:2] == ["b", "c"]  # b shares 2 clickers with a, c (more popular) only 1
    seen: dict[str, set] = {}
    add_clicks(seen, log)
    batch = make_cols(["u5", "u5"], ["b", "c"], [1, 1])
    assert recall_hits(cf.user_item_scores, cf.notes, batch, seen, 1).tolist() == [1.0, 0.0]
    assert recall_hits(pop.user_item_scores, pop.notes, batch, seen, 1).tolist() == [0.0, 1.0]


def test_baselines_never_use_the_batch_they_score() -> None:
    tasks = ("click", "like")
    warm = make_cols(["u1", "u2", "u3", "u4"], ["n1", "n1", "n2", "n2"], [1, 0, 1, 1], [1, 0, 0, 0])
    batch = make_cols(["u1", "u2", "u3"], ["new", "new", "n1"], [1, 1, 1], [1, 1, 1])
    flipped = make_cols(["u1", "u2", "u3"], ["new", "new", "n1"], [0, 0, 0], [0, 0, 0])
    pop, recent = Popularity(tasks), RecentPopularity(tasks, HOUR_MS)
    rate, cf = SmoothedRate(tasks, k=2.0), ItemCF()
    for model in (pop, recent, rate, cf):
        model.update(warm)
    lr = WindowRateLR(tasks)
    lr.fit(warm)
    for model in (pop, recent, rate, lr):
        got, other = model.predict(batch), model.predict(flipped)
        for t in tasks:
            np.testing.assert_array_equal(got[t], other[t])  # the batch's labels are not read
    assert pop.predict(batch)["click"].tolist() == [0.0, 0.0, 1.0]
    assert recent.predict(batch)["click"][:2].tolist() == [0.0, 0.0]
    # a new note gets the global past rate: 3 clicks and 1 like in 4 impressions
    assert rate.predict(batch)["click"][:2].tolist() == [0.75, 0.75]
    assert rate.predict(batch)["like"][:2].tolist() == [0.25, 0.25]
    seen: dict[str, set] = {}
    add_clicks(seen, warm)
    assert recall_hits(cf.user_item_scores, cf.notes, batch, seen, 1)[:2].tolist() == [0.0, 0.0]
    for model in (pop, recent, rate, cf):
        model.update(batch)
    assert pop.predict(batch)["click"].tolist() == [2.0, 2.0, 2.0]
    assert recent.predict(batch)["click"][0] > 0
    assert rate.predict(batch)["click"][0] == pytest.approx((2 + 2 * 6 / 7) / (2 + 2))  # prior 6/7


def test_recent_popularity_halves_per_half_life() -> None:
    model = RecentPopularity(("click",), 2 * HOUR_MS)
    model.update(make_cols(["u1", "u2"], ["a", "a"], [1, 1], ts=[T0, T0]))
    later = make_cols(["u3", "u3"], ["a", "a"], [0, 0], ts=[T0 + 2 * HOUR_MS, T0 + 4 * HOUR_MS])
    assert model.predict(later)["click"].tolist() == pytest.approx([1.0, 0.5])


def test_vocab_keeps_first_sight_order() -> None:
    v = Vocab()
    assert v.add(["b", "a", "b"]).tolist() == [0, 1, 0]
    assert v.get(["a", "z"]).tolist() == [1, -1]


def test_every_baseline_scores_exactly_the_models_batches() -> None:
    rng = np.random.default_rng(3)
    n = 900
    cols = make_cols(
        [f"u{i}" for i in rng.integers(0, 40, n)],
        [f"n{i}" for i in rng.integers(0, 80, n)],
        rng.integers(0, 2, n).tolist(),
        rng.integers(0, 2, n).tolist(),
        stats=rng.integers(0, 30, (n, len(STAT_FEATURES))).astype(np.float32),
    )
    warm, rest, replay = stream(cols, ("click", "like"), 0.4, 100)
    with Progress(disable=True) as progress:
        choice = run_baselines(warm, rest, replay, 100, progress, "toy", [1.0, 24.0], 20.0)
    assert "h for ranking" in choice
    sizes = [len(b) for b in rest]
    for variant in ("popularity", "recent popularity", "smoothed rate", "LR"):
        for t in ("click", "like"):
            assert [len(p) for p in replay.preds[variant][t]] == sizes
    clicked = [len(u) for u in replay.hit_users]
    for variant in ("popularity", "recent popularity", "ItemCF"):
        assert [len(h) for h in replay.hits[variant]] == clicked
        assert np.isfinite(np.concatenate(replay.hits[variant])).all()
