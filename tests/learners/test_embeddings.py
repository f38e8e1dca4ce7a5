"""The collisionless embedding store: admission, expiry, memory bound, sparse updates, deltas."""

from __future__ import annotations

import numpy as np
import torch

from learners.config import EmbeddingConfig
from learners.embeddings import DEFAULT_ID, EmbeddingTable, IdEmbedding


def ts(n: int, t: int = 1_000) -> np.ndarray:
    return np.full(n, t, dtype=np.int64)


def test_admission_after_k_sightings_uses_the_default_row_before() -> None:
    table = EmbeddingTable("user", EmbeddingConfig(dim=4, admit_after=3))
    assert table.observe(["a"], ts(1)).tolist() == [0]
    assert table.observe(["a", "b"], ts(2)).tolist() == [0, 0]
    rows = table.observe(["a", "b"], ts(2))
    assert rows[0] > 0 and rows[1] == 0  # a seen 3 times, b twice
    assert table.rows(["a", "b", "zzz"]).tolist() == [rows[0], 0, 0]
    assert len(table) == 1 and table.stats().pending == 1


def test_ids_never_collide() -> None:
    table = EmbeddingTable("note", EmbeddingConfig(dim=2, admit_after=1))
    ids = [f"n{i}" for i in range(5_000)]
    rows = table.observe(ids, ts(len(ids)))
    assert len(set(rows.tolist())) == len(ids) and 0 not in rows
    assert table.capacity > 5_000  # grew


def test_expiry_by_event_time_ttl_frees_rows() -> None:
    table = EmbeddingTable("user", EmbeddingConfig(dim=2, admit_after=2, ttl_ms=10_000))
    table.observe(["old", "old"], ts(2, 1_000))
    table.observe(["new", "new"], ts(2, 9_000))
    table.observe(["pending"], ts(1, 1_000))
    assert table.stats().pending == 1
    assert table.expire(now_ms=12_000) == 1
    assert "old" not in table.index and "new" in table.index
    assert table.stats().pending == 0  # forgotten too
    assert table.observe(["old"], ts(1, 12_000))[0] == 0  # back: counted from scratch


def test_memory_bound_evicts_the_least_recently_seen() -> None:
    table = EmbeddingTable("note", EmbeddingConfig(dim=2, admit_after=1, max_rows=100))
    for i in range(300):
        table.observe([f"n{i}"], ts(1, i))
        assert len(table) <= 100 and table.capacity <= 101
    assert set(table.index) == {f"n{i}" for i in range(200, 300)}
    assert table.stats().evicted == 200


def test_eviction_spares_the_rows_of_the_current_batch() -> None:
    table = EmbeddingTable("note", EmbeddingConfig(dim=2, admit_after=1, max_rows=3))
    table.observe(["a", "b", "c"], np.array([1, 2, 3]))
    rows = table.observe(["a", "d"], np.array([0, 4]))  # a is in this batch: b goes
    assert set(table.index) == {"a", "c", "d"} and 0 not in rows


def test_sparse_adagrad_writes_only_touched_rows_and_tracks_them() -> None:
    table = EmbeddingTable("user", EmbeddingConfig(dim=3, admit_after=1))
    rows = torch.from_numpy(table.observe(["a", "b", "c"], ts(3)))
    table.clear_changed()
    before = table.weight.clone()
    emb = IdEmbedding(table)
    out = emb(rows[:2])
    out.sum().backward()
    emb.sparse_step()
    changed = (table.weight != before).any(dim=1)
    assert changed[rows[:2]].all() and not changed[rows[2]]
    delta = table.changed()
    assert sorted(delta.ids) == ["a", "b"]
    table.clear_changed()
    assert table.changed().ids == []


def test_sparse_step_sums_every_lookup_scales_and_can_freeze_the_default_row() -> None:
    table = EmbeddingTable("note", EmbeddingConfig(dim=2, admit_after=1, lr=0.1))
    rows = torch.from_numpy(table.observe(["a", "b", "c"], ts(3)))  # rows 1, 2, 3
    emb = IdEmbedding(table)
    (emb(torch.tensor([0, rows[0], rows[1]])).sum() + emb(rows[1:]).sum()).backward()
    acc_before = table.accum.clone()
    emb.sparse_step(scale=4.0)
    # row b was looked up twice: gradient 2 per coordinate, times 4; a and c: 1 times 4
    g2 = table.accum - acc_before
    assert torch.allclose(g2[rows], torch.tensor([16.0, 64.0, 16.0]))
    assert g2[0] == 16.0  # the default row trains by default
    emb.train_default = False
    before = table.weight[0].clone()
    emb(torch.tensor([0, int(rows[0])])).sum().backward()
    emb.sparse_step()
    assert torch.equal(table.weight[0], before) and table.accum[rows[0]] > acc_before[rows[0]]


def test_id_dropout_reads_the_default_row_in_full_training_only() -> None:
    table = EmbeddingTable("user", EmbeddingConfig(dim=2, admit_after=1))
    rows = torch.from_numpy(table.observe([f"u{i}" for i in range(2_000)], ts(2_000)))
    emb = IdEmbedding(table)
    table.weight[0] = torch.tensor([5.0, 5.0])  # the default row stands out
    emb.set_dropout(0.3, seed=1)
    first = emb(rows).detach()
    emb.set_dropout(0.3, seed=1)
    out = emb(rows)  # full training: grad enabled, default row trained
    assert torch.equal(out.detach(), first)  # seeded: the same draws
    share = float((out == 5.0).all(dim=1).float().mean())
    assert 0.25 < share < 0.35  # about 30 % of the samples read the default row
    out.sum().backward()
    emb.sparse_step()
    assert table.accum[0] > table.config.initial_accumulator  # the default row learned
    emb.train_default = False  # online mode: every sample reads its own row
    assert torch.equal(emb(rows).detach(), table.weight[rows])
    with torch.no_grad():  # scoring never drops
        emb.train_default = True
        assert torch.equal(emb(rows), table.weight[rows])


def test_export_and_load_round_trip() -> None:
    table = EmbeddingTable("user", EmbeddingConfig(dim=3, admit_after=1))
    table.observe(["a", "b"], np.array([5, 7]))
    rows, accum, seen = table.export()
    assert rows.ids[0] == DEFAULT_ID and rows.weights.dtype == np.float32
    other = EmbeddingTable("user", EmbeddingConfig(dim=3, admit_after=1))
    other.load(rows, accum, seen)
    for key in ("a", "b"):
        assert torch.equal(other.weight[other.index[key]], table.weight[table.index[key]])
    assert other.last_seen[other.index["b"]] == 7
