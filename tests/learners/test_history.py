"""Side inputs of the models: the user's click history (rows and masks, DIN attention in the
ranker, history pooling in the retriever's user tower), the note's duration (buckets, through
the retriever's side info to serving), legacy snapshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.baselines import auc
from learners.config import (
    EmbeddingConfig,
    LearnConfig,
    RankerConfig,
    RetrieverConfig,
    config_from_dict,
)
from learners.embeddings import EmbeddingTable, IdEmbedding
from learners.full import load_or_create, train_pass
from learners.inference import Ranker, Retriever
from learners.inputs import LABEL_COLUMNS, Columns, F, duration_tensor, history_rows
from learners.modules import TargetAttention
from learners.snapshots import SnapshotConfig, SnapshotReader, SnapshotWriter
from learners.training import RankerState, RetrieverState
from tests.learners.helpers import CONFIG, synthetic

SMALL = dict(experts=2, expert_hidden=(16,), tower_hidden=(8,))


def test_history_rows_pads_masks_and_truncates() -> None:
    table = EmbeddingTable("note", EmbeddingConfig(dim=2, admit_after=1))
    a, b = table.observe(["a", "b"], np.zeros(2, np.int64)).tolist()
    rows, mask = history_rows(table.rows, [["a", "zzz", "b"], [], ["b"]], 2)
    assert rows.tolist() == [[a, 0], [0, 0], [b, 0]]  # "zzz" unknown: the default row
    assert mask.tolist() == [[True, True], [False, False], [True, False]]


def test_duration_buckets() -> None:
    got = duration_tensor(np.array([0, -5, 500, 1_000, 3_000, 60_000, 1e9]), 8).tolist()
    assert got == [0, 0, 1, 2, 3, 6, 7]  # 0 unknown, 1 + floor(log2(1 + s)), capped


def test_attention_is_a_convex_mix_of_the_history_and_zero_without_one() -> None:
    table = EmbeddingTable("note", EmbeddingConfig(dim=3, admit_after=1))
    rows = torch.from_numpy(table.observe(["a", "b", "c"], np.zeros(3, np.int64)))
    table.weight[rows] = torch.eye(3)
    att = TargetAttention(IdEmbedding(table), (4,))
    with torch.no_grad():
        out = att(torch.ones(2, 3), rows.repeat(2, 1), torch.tensor([[True] * 3, [False] * 3]))
    h = out[0, :3]  # the mix; then the mix times the target (ones)
    assert torch.allclose(h.sum(), torch.tensor(1.0)) and (h >= 0).all()
    assert torch.equal(out[0, 3:], h)
    assert torch.equal(out[1], torch.zeros(6))


def _group_world(n: int, seed: int, shared_user: bool = True) -> Columns:
    """Users whose history holds notes of one group; clicked iff the target note is of that
    group - only the history can tell. `shared_user`: all samples under one user id (the ID
    says nothing), else every sample a new user (whose own row is trained once)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, n)
    same = rng.random(n) < 0.5
    target = np.where(same, group, 1 - group)
    notes = [f"g{t}n{k}" for t, k in zip(target, rng.integers(0, 20, n), strict=True)]
    history = [[f"g{g}n{k}" for k in rng.integers(0, 20, 5)] for g in group]
    labels = {k: np.zeros(n, np.float32) for k in LABEL_COLUMNS}
    labels["click"] = same.astype(np.float32)
    return Columns(
        user_id=["anonymous"] * n if shared_user else [f"u{seed}-{i}" for i in range(n)],
        note_id=notes,
        author_id=[""] * n,
        category=[""] * n,
        ts=np.arange(n, dtype=np.int64) * 1000,
        position=np.full(n, -1),
        user_stats=np.zeros((n, F), np.float32),
        note_stats=np.zeros((n, F), np.float32),
        labels=labels,
        watch_ms=np.zeros(n, np.float32),
        keep_rate=np.ones(n, np.float32),
        history=history,
    )


def test_attention_learns_to_match_the_target_with_the_history() -> None:
    """Note embeddings that know the groups (fixed); only the attention and a logistic head
    learn: click iff the target's group is the history's."""
    torch.manual_seed(0)
    table = EmbeddingTable("note", EmbeddingConfig(dim=4, admit_after=1))
    notes = [f"g{g}n{k}" for g in (0, 1) for k in range(20)]
    rows = torch.from_numpy(table.observe(notes, np.zeros(len(notes), np.int64)))
    sign = torch.tensor([1.0 if n.startswith("g0") else -1.0 for n in notes])
    table.weight[rows] = torch.randn(len(notes), 4) * 0.3 + sign[:, None]
    emb = IdEmbedding(table)
    emb.train_default = False
    att = TargetAttention(emb, (8,))
    head = torch.nn.Linear(att.out_dim, 1)
    opt = torch.optim.Adam([*att.parameters(), *head.parameters()], lr=1e-2)

    def logits(world: Columns) -> torch.Tensor:
        hist, mask = history_rows(table.rows, world.history, 5)
        target = emb(torch.from_numpy(table.rows(world.note_id)))  # (B, d)
        return head(att(target, hist, mask)).squeeze(-1)  # (B,)

    train = _group_world(3_000, seed=1)
    for _ in range(3):
        for b in train.batches(128):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits(b), torch.from_numpy(b.labels["click"])
            )
            opt.zero_grad()
            loss.backward()
            emb.sparse_step()
            opt.step()
    test = _group_world(1_000, seed=2)
    with torch.no_grad():
        assert auc(test.labels["click"], logits(test).numpy()) > 0.95


def test_the_ranker_reads_the_history_only_when_configured() -> None:
    world = _group_world(64, seed=4)
    other = Columns(**{**world.__dict__, "history": [["g9n9"] * 3 for _ in range(64)]})
    for history, differs in ((5, True), (0, False)):
        state = RankerState.create(
            RankerConfig(history=history, **SMALL), EmbeddingConfig(admit_after=1)
        )
        state.train_step(world, torch.optim.Adam(state.dense_parameters(), lr=1e-2))
        state.store["note"].observe(["g9n9"], np.zeros(1, np.int64))
        a, b = state.predict(world)["click"], state.predict(other)["click"]
        assert (not np.allclose(a, b)) == differs


def test_the_retriever_encodes_an_unseen_user_from_the_history() -> None:
    state = RetrieverState.create(RetrieverConfig(history=5), EmbeddingConfig(admit_after=1))
    cols = _group_world(3_000, seed=3, shared_user=False)
    opt = torch.optim.Adam(state.dense_parameters(), lr=1e-2)
    for _ in range(3):
        for b in cols.batches(256):
            state.train_step(b, opt)
    stats = np.zeros((2, F), np.float32)
    hist = [[f"g0n{k}" for k in range(5)], [f"g1n{k}" for k in range(5)]]
    users = state.user_vectors(["new-a", "new-b"], stats, hist)  # (2, d)
    ids, items = state.item_vectors()
    group = np.array([int(n[1]) for n in ids])
    scores = users @ items.T  # (2, N)
    for g in (0, 1):  # each user's top notes are of its history's group
        top = np.argsort(-scores[g])[:10]
        assert (group[top] == g).mean() >= 0.9
    blind = state.user_vectors(["new-a", "new-b"], stats)  # no history: the same vector
    assert np.allclose(blind[0], blind[1])


def test_snapshots_from_before_the_history_keep_their_architecture() -> None:
    ranker = config_from_dict(RankerConfig, {"kind": "mmoe"})
    retriever = config_from_dict(RetrieverConfig, {"out_dim": 32})
    assert ranker.history == 0 and ranker.duration_buckets == 0 and retriever.history == 0
    assert RankerConfig().duration_buckets > 0  # a new ranker reads the duration


def test_durations_reach_serving_through_the_retrievers_side_info(tmp_path: Path) -> None:
    cols, _ = synthetic(3_000, seed=5)
    length = {n: 0 if int(n[1:]) % 3 == 0 else 1_000 * (int(n[1:]) % 50) for n in cols.note_id}
    durations = np.array([length[n] for n in cols.note_id])  # a note's own, 0 for a third
    cols = Columns(**{**cols.__dict__, "item_duration_ms": durations.astype(np.float32)})
    snapshots = SnapshotConfig(root=tmp_path)
    ranker, retriever, _, _ = load_or_create(CONFIG, snapshots)
    train_pass(ranker, retriever, cols, CONFIG)
    for name, state in (("ranker", ranker), ("retriever", retriever)):
        tables, dense = state.full_state()
        SnapshotWriter(tmp_path, name, snapshots).publish_full(
            tables, dense, state.hwm_ms, state.meta()
        )
    served = Retriever.from_snapshot(SnapshotReader(tmp_path, "retriever").latest())
    notes = sorted(length)[:50]
    assert served.durations([*notes, "never-seen"]).tolist() == [*(length[n] for n in notes), 0]
    scorer = Ranker.from_snapshot(SnapshotReader(tmp_path, "ranker").latest())
    user = cols.user_stats[0]
    stats = np.zeros((len(notes), F), np.float32)
    authors, cats = served.side_info(notes)
    known = scorer.score("u1", notes, authors, cats, user, stats, durations=served.durations(notes))
    blind = scorer.score("u1", notes, authors, cats, user, stats)
    assert not np.allclose(known["click"], blind["click"])  # the ranker reads the duration


def test_learn_settings_switch_the_history_on_for_fresh_models(tmp_path: Path) -> None:
    config = LearnConfig(ranker_history=7, retriever_history=3)
    ranker, retriever, _, _ = load_or_create(config, SnapshotConfig(root=tmp_path))
    assert (ranker.config.history, retriever.config.history) == (7, 3)
    explicit, _, _, _ = load_or_create(config, SnapshotConfig(root=tmp_path), RankerConfig())
    assert explicit.config.history == RankerConfig().history  # given configs win
