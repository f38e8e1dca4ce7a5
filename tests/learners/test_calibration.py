"""Logit offsets: the bisection fit, the online tracker on held-out predictions, and the refit
offsets reaching serving through deltas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from learners.calibration import OffsetTracker, fit_offset
from learners.inference import Ranker
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


def test_the_tracker_fits_the_newest_window_and_forgets_the_rest() -> None:
    rng = np.random.default_rng(1)
    tracker = OffsetTracker({"click": False, "like": True}, window=4_000)
    assert tracker.observe(*_batch(rng, 1.0)) == {}  # 500 < window // 4
    for _ in range(12):
        offsets = tracker.observe(*_batch(rng, 1.0))
    assert offsets["click"] == pytest.approx(-1.0, abs=0.15)  # the logits were 1 too high
    # the weighted task is matched to the weighted rate: the same logits, a different offset
    assert offsets["like"] != pytest.approx(offsets["click"], abs=0.01)
    for _ in range(8):  # 4,000 new samples: the old ones are out of the window
        offsets = tracker.observe(*_batch(rng, -0.5))
    assert offsets["click"] == pytest.approx(0.5, abs=0.15)


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
