"""The three-tower pre-ranker: shapes, the item tower cache, learning, distillation, snapshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.baselines import auc
from learners.config import RankerConfig, RetrieverConfig
from learners.errors import ModelConfigError
from learners.full import prerank_pass, train_pass
from learners.inference import Ranker
from learners.online import OnlineLearner
from learners.preranker import PreRanker, PreRankerConfig, teacher_probabilities
from learners.snapshots import SnapshotConfig, SnapshotReader, SnapshotWriter
from learners.training import PreRankerState, RankerState, RetrieverState
from tests.learners.helpers import CONFIG, Clock, messages, publish_trained, synthetic

SMALL = dict(user_hidden=(16, 8), item_hidden=(16, 8), cross_hidden=(8,), head_hidden=(8,))


def _state(**kw) -> PreRankerState:
    return PreRankerState.create(PreRankerConfig(**{**SMALL, **kw}), CONFIG.embedding(16), seed=3)


def test_towers_shapes_and_one_logit_per_task() -> None:
    cols, _ = synthetic(300, seed=1)
    state = _state()
    x = state.model.inputs(cols, observe=True)
    m = state.model
    u = m.user_tower(x.user_rows, x.user_stats, x.user_rates)
    i = m.item_tower(x.item_rows, x.duration)
    c = m.cross_tower(x.note_stats, x.note_rates, x.user_rates)
    assert u.shape == (len(cols), 8) and i.shape == (len(cols), 8) and c.shape == (len(cols), 8)
    logits = m(x)
    assert set(logits) == {*state.config.tasks, "watch"}
    assert all(z.shape == (len(cols),) for z in logits.values())
    with pytest.raises(ModelConfigError, match="distill"):
        PreRankerConfig(distill=-1)


def test_request_scoring_with_cached_item_tower_equals_batch_scoring() -> None:
    cols, _ = synthetic(2_000, seed=2)
    state = _state()
    state.train_step(cols, torch.optim.Adam(state.dense_parameters(), lr=1e-3))
    notes = sorted(set(cols.note_id))[:50]
    side = {n: (a, c) for n, a, c in zip(cols.note_id, cols.author_id, cols.category, strict=True)}
    req = Ranker.columns(
        "u3", notes, [side[n][0] for n in notes], [side[n][1] for n in notes],
        cols.user_stats[0], cols.note_stats[:50],
    )  # fmt: skip
    cached = state.predict(req)
    assert len(state._items) == 50  # the item tower ran once per note
    again = state.predict(req)
    whole = state.predict_batch(req)
    for t in cached:
        np.testing.assert_allclose(cached[t], whole[t], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(cached[t], again[t])
    state.train_step(cols.take(np.arange(100)), None)  # rows move: the cache is dropped
    assert state._items == {}


def test_predicting_keeps_the_model_mode_and_scores_as_in_eval_mode() -> None:
    """`predict` of a model in training mode scores in eval mode and leaves it training; a
    served model (eval mode) stays in eval mode."""
    cols, _ = synthetic(500, seed=6)
    state = _state()
    state.train_step(cols, torch.optim.Adam(state.dense_parameters(), lr=1e-3))
    req = cols.take(np.zeros(40, dtype=np.int64))
    state.model.train()
    training = state.predict(req)
    assert state.model.training and all(m.training for m in state.model.modules())
    state.model.eval()
    served = state.predict(req)
    assert not any(m.training for m in state.model.modules())
    for t in served:
        np.testing.assert_array_equal(training[t], served[t])


def test_learns_clicks_and_distillation_pulls_it_towards_the_ranker() -> None:
    train, _ = synthetic(6_000, seed=4)
    test, _ = synthetic(2_000, seed=5)
    config = CONFIG.model_copy(update={"batch_size": 128, "dense_lr": 1e-2})
    ranker = RankerState.create(RankerConfig(), config.embedding(16), seed=7)
    retriever = RetrieverState.create(RetrieverConfig(), config.embedding(16), seed=7)
    train_pass(ranker, retriever, train, config)
    teacher = ranker.predict(test)["click"]
    agreement = {}
    for d in (0.0, 1.0):
        pre = PreRankerState.create(PreRankerConfig(distill=d), config.embedding(16), seed=3)
        prerank_pass(pre, train, config, teacher=ranker)
        p = pre.predict_batch(test)["click"]
        assert auc(test.labels["click"], p) > 0.55  # the ranker: 0.62 on this fixture
        agreement[d] = np.corrcoef(p, teacher)[0, 1]
    assert agreement[1.0] > agreement[0.0] > 0.5
    soft = teacher_probabilities(ranker, test.take(np.arange(10)))
    assert set(soft) == {*ranker.config.tasks, "watch"}


def test_snapshot_round_trip_and_serving_scores(tmp_path: Path) -> None:
    cols, _ = synthetic(1_500, seed=6)
    state = _state(distill=0.0)
    prerank_pass(state, cols, CONFIG)
    tables, dense = state.full_state()
    SnapshotWriter(tmp_path, "preranker", SnapshotConfig(root=tmp_path)).publish_full(
        tables, dense, state.hwm_ms, state.meta()
    )
    served = PreRanker.from_snapshot(SnapshotReader(tmp_path, "preranker").latest())
    notes = cols.note_id[:20]
    got = served.score(
        "u1", notes, cols.author_id[:20], cols.category[:20], cols.user_stats[0],
        cols.note_stats[:20], durations=cols.item_duration_ms[:20],
    )  # fmt: skip
    want = state.predict(
        Ranker.columns("u1", notes, cols.author_id[:20], cols.category[:20], cols.user_stats[0],
                       cols.note_stats[:20], durations=cols.item_duration_ms[:20])
    )  # fmt: skip
    assert served.cached == len(set(notes))
    for t in want:
        np.testing.assert_allclose(got[t], want[t], rtol=1e-5)
    empty = served.score("u1", [], [], [], cols.user_stats[0], cols.note_stats[:0])
    assert empty["click"].size == 0


def test_online_learner_updates_and_publishes_the_preranker(tmp_path: Path) -> None:
    snapshots = publish_trained(tmp_path, preranker=True)
    clock = Clock()
    learner = OnlineLearner.from_latest(CONFIG, snapshots, clock=clock)
    assert learner.names == ("ranker", "retriever", "preranker")
    dense = [p.clone() for p in learner.preranker.dense_parameters()]
    full = PreRanker.from_snapshot(SnapshotReader(tmp_path, "preranker").latest())
    for m in messages(seed=21, n=1_000, users=300):
        learner.add(m)
    clock.now = 11.0
    published = learner.tick()
    assert [(m.model, m.kind) for m in published] == [
        ("ranker", "delta"), ("retriever", "delta"), ("preranker", "delta"),
    ]  # fmt: skip
    for a, b in zip(dense, learner.preranker.dense_parameters(), strict=True):
        assert torch.equal(a, b)  # online: ID rows only
    served = PreRanker.from_snapshot(SnapshotReader(tmp_path, "preranker").latest())
    cols, _ = synthetic(50, seed=22, users=300)
    args = ("u5", cols.note_id[:20], cols.author_id[:20], cols.category[:20], cols.user_stats[0],
            cols.note_stats[:20])  # fmt: skip
    got = served.score(*args)
    want = learner.preranker.predict(Ranker.columns(*args))
    for t in want:
        np.testing.assert_allclose(got[t], want[t], rtol=1e-6)
    assert not np.allclose(full.score(*args)["click"], got["click"])  # the delta moved it
