"""MMoE / PLE / shared-bottom shapes and learning, down-sampling calibration, two-tower log-Q."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learners.config import (
    EmbeddingConfig,
    RankerConfig,
    RetrieverConfig,
    config_from_dict,
    config_to_dict,
)
from learners.errors import ModelConfigError
from learners.inputs import log_buckets
from learners.mmoe import WATCH, CGCLayer, PLECore, make_core
from learners.modules import Gate
from learners.training import RankerState, RetrieverState
from learners.two_tower import StreamingFrequency
from tests.learners.helpers import synthetic

SMALL = dict(experts=3, expert_hidden=(16,), tower_hidden=(8,))


def test_log_buckets() -> None:
    got = log_buckets(np.array([0, 1, 2, 3, 4, 1000, -5, np.nan]), 8)
    assert got.tolist() == [0, 1, 1, 2, 2, 7, 0, 0]


@pytest.mark.parametrize("kind", ["mmoe", "ple", "shared_bottom"])
def test_core_shapes(kind: str) -> None:
    shape = RankerConfig(
        kind=kind,
        experts=3,
        expert_hidden=(8,),
        tower_hidden=(4,),
        gate_dropout=0.2,
        dropout=0.0,
        shared_experts=2,
        task_experts=3,
        levels=2,
    )
    core = make_core(shape, 10, ("a", "b"))
    out = core(torch.randn(5, 10))
    assert set(out.logits) == {"a", "b"} and all(z.shape == (5,) for z in out.logits.values())
    assert len(out.gates) == (0 if kind == "shared_bottom" else 2)
    width = {"mmoe": 3, "ple": 3 + 2}.get(kind)  # PLE: the task's own + the shared experts
    if width is not None:
        assert all(g.shape == (5, width) for g in out.gates)
        assert all(torch.allclose(g.sum(dim=1), torch.ones(5)) for g in out.gates)
        assert 0 <= out.gate_entropy() <= np.log(width) + 1e-6
    else:
        assert np.isnan(out.gate_entropy())
    if kind == "ple":
        assert isinstance(core, PLECore) and len(core.layers) == 2
        # each level's experts together as wide as the 3 MMoE experts: 8 x 3 / (2 + 2 x 3) = 3
        assert core.layers[0].shared.out_dim == 3
        assert core.layers[0].shared_gate is not None and core.layers[1].shared_gate is None


def test_ple_fields_default_for_old_snapshots_and_are_checked() -> None:
    data = config_to_dict(RankerConfig())
    for name in ("shared_experts", "task_experts", "levels"):
        del data[name]  # a snapshot written before PLE
    old = config_from_dict(RankerConfig, data)
    assert old == RankerConfig() and old.kind == "mmoe"
    with pytest.raises(ModelConfigError, match="'ple'"):
        RankerConfig(kind="cgc")
    with pytest.raises(ModelConfigError, match="levels"):
        RankerConfig(kind="ple", levels=0)


def test_cgc_task_gate_mixes_only_its_own_and_the_shared_experts() -> None:
    torch.manual_seed(0)
    layer = CGCLayer(6, ("a", "b"), 2, 3, (4,), last=False).eval()
    x = torch.randn(32, 6)
    xs = {"a": x, "b": x}
    outs, shared, gates = layer(xs, x)
    assert gates["a"].shape == gates["b"].shape == (32, 2 + 3)
    assert layer.shared_gate is not None and layer.shared_gate.linear.out_features == 2 * 2 + 3
    # scale task b's experts: task a's output must not move, b's and the shared output must
    hook = layer.own["b"].register_forward_hook(lambda _m, _i, e: 10.0 * e + 1.0)
    outs2, shared2, _ = layer(xs, x)
    hook.remove()
    assert torch.equal(outs2["a"], outs["a"])
    assert not torch.allclose(outs2["b"], outs["b"])
    assert not torch.allclose(shared2, shared)
    # and the shared experts feed every task
    hook = layer.shared.register_forward_hook(lambda _m, _i, e: 10.0 * e + 1.0)
    outs3, _, _ = layer(xs, x)
    hook.remove()
    assert not torch.allclose(outs3["a"], outs["a"]) and not torch.allclose(outs3["b"], outs["b"])


def test_gate_dropout_keeps_a_distribution() -> None:
    gate = Gate(4, 5, dropout=0.5)
    g = gate(torch.randn(200, 4))
    assert torch.allclose(g.sum(dim=1), torch.ones(200))
    assert (g == 0).any()  # some outputs dropped in training
    gate.eval()
    assert (gate(torch.randn(200, 4)) > 0).all()


@pytest.mark.parametrize("kind", ["mmoe", "ple", "shared_bottom"])
def test_ranker_learns_and_predicts_every_task(kind: str) -> None:
    cols, _ = synthetic(12_000, seed=3)
    state = RankerState.create(
        RankerConfig(kind=kind, **SMALL), EmbeddingConfig(admit_after=1, lr=0.1)
    )
    opt = torch.optim.Adam(state.dense_parameters(), lr=5e-3)
    losses = [state.train_step(b, opt).loss for _ in range(2) for b in cols.batches(512)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    pred = state.predict(cols.take(np.arange(7)))
    assert set(pred) == {*state.config.tasks, "watch_ms"}
    assert all(v.shape == (7,) for v in pred.values())
    assert WATCH in state.model.tasks and (pred["watch_ms"] > 0).all()


def test_calibration_restores_the_true_click_rate_within_5_percent() -> None:
    a = 0.2
    train, _ = synthetic(120_000, seed=5, keep_rate=a)
    test, p_true = synthetic(20_000, seed=6, keep_rate=1.0)
    # The scenario the offset is for: a model whose last Adam steps left its mean off (0.85 of
    # the truth for this seed and shape; the fixture has no durations, so that input is left out
    # to keep this exact model - with it the drift was 0.6 %, nothing to correct).
    state = RankerState.create(
        RankerConfig(kind="shared_bottom", duration_buckets=0, **SMALL),
        EmbeddingConfig(admit_after=1, lr=0.1),
    )
    opt = torch.optim.Adam(state.dense_parameters(), lr=3e-3)
    for _ in range(2):
        for b in train.batches(1024):
            state.train_step(b, opt)
    assert state.neg_keep_rate == pytest.approx(a)
    truth = p_true.mean()
    drifted = state.predict(test)["click"].mean()
    # what full training does after its pass: the logit offset that makes the mean calibrated
    # prediction over the log's samples weighted by 1 / keep_rate (every impression) equal the
    # weighted click rate
    offsets = state.recalibrate(train)
    assert set(offsets) == set(state.config.tasks)
    w = 1.0 / train.keep_rate
    on_train = state.predict(train)["click"]
    assert float((w * on_train).sum() / w.sum()) == pytest.approx(
        float((w * train.labels["click"]).sum() / w.sum()), rel=1e-4
    )
    raw = state.predict(test, calibrated=False)["click"].mean()
    calibrated = state.predict(test)["click"].mean()
    assert abs(raw / truth - 1) > 0.5  # down-sampling inflates the raw rate
    assert abs(calibrated / truth - 1) < 0.05
    # without the offset: 0.85 of the truth here (the mean wanders with the last Adam steps)
    assert abs(calibrated / truth - 1) < abs(drifted / truth - 1)
    # the importance-weighted tasks: their mean weighted by 1 / keep_rate on the log equals the
    # weighted rate (the rate before down-sampling), so on unsampled data it is the true rate
    on_log = state.predict(train)
    on_test = state.predict(test)
    for t in ("like", "completion"):
        weighted = float((w * on_log[t]).sum() / w.sum())
        assert weighted == pytest.approx(float((w * train.labels[t]).sum() / w.sum()), rel=1e-4)
        assert abs(on_test[t].mean() / test.labels[t].mean() - 1) < 0.05


def test_streaming_frequency_estimates_the_item_probability() -> None:
    freq = StreamingFrequency(1 << 12, alpha=0.05)
    stream = ["hot" if i % 4 == 0 else f"cold{i}" for i in range(8_000)]
    for lo in range(0, len(stream), 100):
        freq.update(stream[lo : lo + 100])
    assert freq.probability(["hot"])[0] == pytest.approx(0.25, rel=0.1)
    assert freq.probability(["cold17"])[0] < 0.01


def test_two_tower_trains_on_clicks_only_and_corrects_for_popularity() -> None:
    cols, _ = synthetic(6_000, seed=8)
    state = RetrieverState.create(
        RetrieverConfig(extra_negatives=16), EmbeddingConfig(admit_after=1)
    )
    opt = torch.optim.Adam(state.dense_parameters(), lr=3e-3)
    clicked_notes = set()
    for b in cols.batches(512):
        res = state.train_step(b, opt)
        assert res.samples == int(b.labels["click"].sum())
        clicked_notes |= {n for n, c in zip(b.note_id, b.labels["click"], strict=True) if c}
    # shown-but-never-clicked notes got no ID row: they never served as negatives or positives
    assert set(state.store["note"].index) <= clicked_notes
    batch = state.batch(cols.take(np.flatnonzero(cols.labels["click"] > 0)[:64]), observe=False)
    assert batch.neg_rows is not None and batch.neg_logq.shape == (16,)
    popular = state.freq.probability(["n1"])[0]
    rare = max(state.freq.probability([n])[0] for n in clicked_notes if n != "n1")
    assert popular >= rare
    ids, vecs = state.item_vectors()
    assert len(ids) == len(set(cols.note_id)) and np.allclose(np.linalg.norm(vecs, axis=1), 1)
    u = state.user_vectors(["u1"], cols.user_stats[:1])
    assert u.shape == (1, state.config.out_dim)


def test_base_logits_fit_after_training_added_in_eval_mode_and_kept_in_the_snapshot() -> None:
    cols, _ = synthetic(6_000, seed=3)
    config = RankerConfig(base_tasks=("click",), **SMALL)
    state = RankerState.create(config, EmbeddingConfig(admit_after=1, lr=0.1))
    base = state.model.base
    assert base is not None and not base.weight.any()  # adds nothing until fitted
    opt = torch.optim.Adam(state.dense_parameters(), lr=5e-3)
    state.unfreeze()
    for b in cols.batches(512):
        state.train_step(b, opt)
    state.fit_base(cols)
    # the base alone is a logistic regression on the rates: it ranks clicks well above chance
    x = state.model.inputs(cols, observe=False)
    click = base(x.rates)["click"].detach().numpy()
    y = cols.labels["click"]
    assert (click[y > 0][:, None] > click[y == 0][None, :]).mean() > 0.6
    assert state.model.training  # full training: the core alone
    state.model.eval()
    with torch.no_grad():
        trained = state.model.core(state.model.features(x))
        served = state.model(x)
    assert torch.allclose(served.logits["click"], trained.logits["click"] + base(x.rates)["click"])
    assert torch.equal(served.logits["like"], trained.logits["like"])  # not a base task
    _, dense = state.full_state()
    assert any(k.endswith("base.weight") for k in dense)
    assert config_from_dict(RankerConfig, {}).base_tasks == ()  # older snapshots: no base
    with pytest.raises(ModelConfigError):
        RankerConfig(base_tasks=("bogus",))
