"""Logit offsets: the bisection fit, the online tracker on held-out predictions, and the refit
offsets reaching serving through deltas; the prequential AUC of the online ranker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from features.samples import decode_batch
from learners.calibration import OffsetTracker, PrequentialAUC, calibrate, fit_offset, roc_auc
from learners.inference import Ranker
from learners.inputs import Columns
from learners.online import OnlineLearner
from learners.snapshots import SnapshotReader
from tests.learners.helpers import CONFIG, Clock, messages, publish_trained, synthetic


def test_fit_offset_matches_the_weighted_rate() -> None:
    rng = np.random.default_rng(0)
    z = torch.from_numpy(rng.normal(0, 2, 5_000))
    y = torch.from_numpy((rng.random(5_000) < 0.3).astype(np.float64))
    w = torch.from_numpy(rng.choice([1.0, 4.0], 5_000))
    d = fit_offset(z, y, w)
    assert float((w * torch.sigmoid(z + d)).sum() / w.sum()) == pytest.approx(
        float((w * y).sum() / w.sum()), abs=1e-9
    )


def _batch(rng: np.random.Generator, bias: float, n: int = 500) -> tuple:
    """Logits `bias` above the truth they are scored against, with labels drawn from the truth
    and half the negatives down-sampled at a = 0.25 (keep rate 0.25)."""
    truth = rng.normal(-1, 1.5, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-truth))).astype(np.float64)
    keep = np.where((labels == 0) & (rng.random(n) < 0.5), 0.25, 1.0)
    logits = torch.from_numpy(truth + bias)
    return {"click": logits, "like": logits}, {"click": labels, "like": labels}, keep


def _sampled_batch(rng: np.random.Generator, bias: float, a: float = 0.25, n: int = 1_000) -> tuple:
    """Impressions with labels drawn from a known truth, negatives kept at rate `a` (their
    keep rate `a`); click logits are those of q = p / (p + a (1 - p)), the probability on the
    sampled data it learns, like logits those of p (importance weighted), both `bias` too high."""
    truth = rng.normal(-1, 1.5, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-truth))).astype(np.float64)
    kept = (labels > 0) | (rng.random(n) < a)
    truth, labels = truth[kept], labels[kept]
    keep = np.where(labels > 0, 1.0, a)
    logits = {
        "click": torch.from_numpy(truth - np.log(a) + bias),
        "like": torch.from_numpy(truth + bias),
    }
    return logits, {"click": labels, "like": labels}, keep, a


def test_fit_offset_matches_the_calibrated_prediction_to_the_rate_of_every_impression() -> None:
    rng = np.random.default_rng(2)
    logits, labels, keep, a = _sampled_batch(rng, 0.7, n=20_000)
    w = torch.from_numpy(1.0 / keep)
    y = torch.from_numpy(labels["click"])
    d = fit_offset(logits["click"], y, w, a)
    p = calibrate(torch.sigmoid(logits["click"] + d), a)
    assert float((w * p).sum() / w.sum()) == pytest.approx(float((w * y).sum() / w.sum()), abs=1e-9)
    assert d == pytest.approx(-0.7, abs=0.1)  # the bias the logits were given
    # an over-confident model (logits twice as far out): matching its raw mean to the sampled
    # rate (the criterion before) leaves the calibrated mean 15 % above the rate; this matches it
    z = 2 * logits["click"]
    rate = float((w * y).sum() / w.sum())

    def ratio(d: float) -> float:
        return float((w * calibrate(torch.sigmoid(z + d), a)).sum() / w.sum()) / rate

    assert ratio(fit_offset(z, y, torch.ones_like(w))) > 1.1
    assert ratio(fit_offset(z, y, w, a)) == pytest.approx(1.0, abs=1e-9)


def test_the_tracker_fits_the_newest_window_and_forgets_the_rest() -> None:
    rng = np.random.default_rng(1)
    tracker = OffsetTracker({"click": True, "like": False}, window=4_000)
    assert tracker.observe(*_sampled_batch(rng, 1.0)) == {}  # ~490 kept < window // 4
    for _ in range(12):
        offsets = tracker.observe(*_sampled_batch(rng, 1.0))
    # the logits were 1 too high: the calibrated and the importance-weighted task both find it
    assert offsets["click"] == pytest.approx(-1.0, abs=0.15)
    assert offsets["like"] == pytest.approx(-1.0, abs=0.15)
    for _ in range(10):  # ~4,900 new samples: the old ones are out of the window
        offsets = tracker.observe(*_sampled_batch(rng, -0.5))
    assert offsets["click"] == pytest.approx(0.5, abs=0.15)
    assert offsets["like"] == pytest.approx(0.5, abs=0.15)


def test_online_offsets_are_refit_and_reach_serving_through_deltas(tmp_path: Path) -> None:
    snapshots = publish_trained(tmp_path)
    full = SnapshotReader(tmp_path, "ranker").latest()
    clock = Clock()
    config = CONFIG.model_copy(update={"calibration_window": 1_000})
    learner = OnlineLearner.from_latest(config, snapshots, clock=clock)
    before = dict(learner.ranker.logit_offsets)
    learner.run(iter(messages(seed=21, n=2_000, users=300)))
    clock.now = 11.0
    published = learner.tick()
    offsets = published[0].meta["logit_offsets"]
    assert published[0].kind == "delta" and offsets == learner.ranker.logit_offsets
    assert offsets != before  # refit on the stream's held-out predictions
    # serving moves to the delta without reloading the dense parameters: same offsets, same scores
    ranker = Ranker.from_snapshot(full)
    ranker.apply_delta(SnapshotReader(tmp_path, "ranker").latest())
    cols, _ = synthetic(20, seed=22, users=300)
    served = ranker.score(
        cols.user_id[0], cols.note_id, cols.author_id, cols.category,
        cols.user_stats[0], cols.note_stats, cols.position,
    )  # fmt: skip
    one_user = cols.take(np.arange(len(cols)))
    one_user.user_id[:] = [cols.user_id[0]] * len(cols)
    one_user.user_stats[:] = cols.user_stats[0]
    mine = learner.ranker.predict(one_user)
    for task, values in mine.items():
        np.testing.assert_allclose(served[task], values, rtol=1e-6)


def test_roc_auc_counts_pairs_and_ties_a_half() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.3).astype(np.float64)
    s = rng.integers(0, 20, 300).astype(np.float64)  # many ties
    pos, neg = s[y > 0], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(y, s) == pytest.approx(pairs / (len(pos) * len(neg)))
    assert roc_auc(np.array([0.0, 1.0]), np.array([0.2, 0.9])) == 1.0
    assert np.isnan(roc_auc(np.zeros(5), np.arange(5.0)))


def test_the_prequential_auc_reads_the_newest_window() -> None:
    rng = np.random.default_rng(4)
    ring = PrequentialAUC(("click", "like"), window=1_000)
    assert ring.auc() == {}
    for _ in range(3):
        logits, labels, _ = _batch(rng, 0.0)
        ring.observe(logits, labels)
    assert ring.samples == 1_000 and 0.6 < ring.auc()["click"] < 1.0
    for _ in range(2):  # 1,000 new predictions, ranked backwards: the old ones are forgotten
        logits, labels, _ = _batch(rng, 0.0)
        ring.observe({t: -z for t, z in logits.items()}, labels)
    assert ring.auc()["click"] < 0.4


def test_the_online_ranker_measures_its_auc_before_learning(tmp_path: Path) -> None:
    snapshots = publish_trained(tmp_path)
    learner = OnlineLearner.from_latest(CONFIG, snapshots, clock=Clock())
    model = learner.ranker.model  # record every forward pass: each precedes its batch's step
    made: list[np.ndarray] = []
    forward = model.forward

    def recording(inputs):
        out = forward(inputs)
        made.append(out.logits["click"].detach().double().numpy().copy())
        return out

    model.forward = recording
    msgs = messages(seed=23, n=2_000, users=300)
    learner.run(iter(msgs))
    ring = learner.ranker.prequential
    assert ring is not None and ring.samples == 2_000
    auc = ring.auc()
    assert set(auc) == set(learner.ranker.config.tasks) and 0.0 <= auc["click"] <= 1.0
    labels = np.concatenate(
        [Columns.from_samples(decode_batch(m.value).samples).labels["click"] for m in msgs]
    )
    logits = np.concatenate(made)
    assert auc["click"] == pytest.approx(roc_auc(labels, logits))
