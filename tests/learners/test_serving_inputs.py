"""Serving feeds the models what training fed them: the same tensors for the same impression,
history included (the history serving reads is the joiner's: tests/streams/test_samples_history)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from features.samples import Sample
from learners.config import EmbeddingConfig, RankerConfig, RetrieverConfig
from learners.inference import Ranker, Retriever
from learners.inputs import Columns, F
from learners.snapshots import SnapshotReader
from learners.training import RankerState, RetrieverState
from tests.learners.helpers import publish_trained, synthetic, with_history

LENGTH = 5
SMALL = dict(experts=2, expert_hidden=(16,), tower_hidden=(8,))


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    cols, _ = synthetic(3_000, seed=21, users=40, notes=150)
    cols = with_history(cols, LENGTH)
    return cols.to_samples([f"s{i}" for i in range(len(cols))])


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_serving_builds_the_training_tensors_of_a_sample(samples: list[Sample]) -> None:
    emb = EmbeddingConfig(admit_after=1)
    ranker = RankerState.create(RankerConfig(history=LENGTH, **SMALL), emb)
    retriever = RetrieverState.create(RetrieverConfig(history=LENGTH), emb)
    for state in (ranker, retriever):
        opt = torch.optim.Adam(state.dense_parameters(), lr=1e-2)
        for b in Columns.from_samples(samples).batches(256):
            state.train_step(b, opt)
    picked = [s for s in samples if s.click and len(s.history) >= 2][::20][:20]
    picked += [s for s in samples if s.click and not s.history][:5]  # no history yet
    assert len(picked) == 25 and any(len(s.history) == LENGTH for s in picked)
    for s in picked:
        trained = ranker.model.inputs(Columns.from_samples([s]), observe=False)
        served_cols = Ranker.columns(
            s.user_id, [s.note_id], [s.author_id], [s.category], np.array(s.user_stats),
            np.array([s.note_stats]), np.array([s.position]), np.array([s.item_duration_ms]),
            s.history,
        )  # fmt: skip
        served = ranker.model.inputs(served_cols, observe=False)
        assert trained.history is not None
        assert int(trained.history[1].sum()) == len(s.history)
        for name in trained.__dataclass_fields__:
            assert _equal(getattr(trained, name), getattr(served, name)), (s.sample_id, name)

        batch = retriever.batch(Columns.from_samples([s]), observe=False)
        user = retriever.user_inputs([s.user_id], np.array([s.user_stats]), [s.history])
        assert _equal((batch.user_rows, batch.user_stats, batch.history), user), s.sample_id


def test_served_models_read_the_history_they_were_trained_with(tmp_path: Path) -> None:
    publish_trained(tmp_path, history=LENGTH)
    ranker = Ranker.from_snapshot(SnapshotReader(tmp_path, "ranker").latest())
    retriever = Retriever.from_snapshot(SnapshotReader(tmp_path, "retriever").latest())
    assert ranker.history_len == LENGTH and retriever.history_len == LENGTH
    notes = [f"n{i}" for i in range(30)]
    authors, cats = retriever.side_info(notes)
    stats = np.zeros(F)
    args = ("u3", notes, authors, cats, stats, np.zeros((30, F)))
    clicked = ["n1", "n2", "n3"]
    blind = ranker.score(*args)["click"]
    assert not np.allclose(ranker.score(*args, history=clicked)["click"], blind)
    np.testing.assert_array_equal(ranker.score(*args, history=[])["click"], blind)
    vector = retriever.user_vector("u3", stats)
    assert not np.allclose(retriever.user_vector("u3", stats, clicked), vector)
    np.testing.assert_array_equal(retriever.user_vector("u3", stats, []), vector)
    _, _, (hist, mask) = retriever.user_inputs("u3", stats, clicked)
    assert mask.tolist() == [[True] * 3 + [False] * (LENGTH - 3)] and hist[0, 0] > 0
