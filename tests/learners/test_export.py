"""Snapshots any language can use: the ONNX user tower, the tensor schema, the training state
in its own file, and snapshots of the earlier layout still loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.numpy import load as st_load

import learners.snapshots as snapshots_module
from learners.config import RetrieverConfig
from learners.export import ITEM_TOWER, USER_TOWER, snapshot_exports
from learners.inference import Retriever
from learners.snapshots import (
    DENSE,
    TRAIN_STATE,
    SnapshotConfig,
    SnapshotReader,
    SnapshotWriter,
)
from learners.training import RetrieverState
from tests.learners.helpers import CONFIG, synthetic, with_history

TOLERANCE = 1e-5
"""Largest absolute difference allowed between onnxruntime's and torch's vector components
(both float32; they differ by summation order only)."""


def _trained(history: int) -> RetrieverState:
    state = RetrieverState.create(RetrieverConfig(history=history), CONFIG.embedding(16), seed=3)
    cols, _ = synthetic(600, seed=5)
    optimizer = torch.optim.Adam(state.dense_parameters(), lr=1e-2)
    for batch in with_history(cols, max(history, 1)).batches(200):
        state.train_step(batch, optimizer)
    return state


def _publish(root: Path, state: RetrieverState) -> Path:
    tables, dense = state.full_state()
    config = SnapshotConfig(root=root)
    manifest = SnapshotWriter(root, "retriever", config).publish_full(
        tables, dense, state.hwm_ms, state.meta({"offsets": {}}), snapshot_exports(state)
    )
    return root / "retriever" / f"{manifest.version:010d}"


def consumer_user_vectors(
    version: Path, users: list[str], stats: np.ndarray, history: list[list[str]]
) -> np.ndarray:
    """User vectors as a consumer without this project computes them: safetensors, JSON and
    onnxruntime only, following the manifest's schema (a full snapshot, no deltas)."""
    manifest = json.loads((version / "manifest.json").read_text())
    schema = manifest["schema"]
    tables = st_load((version / "tables.safetensors").read_bytes())
    ids = json.loads((version / "ids.json").read_text())
    rows = {t: {i: j for j, i in enumerate(ids[t])} for t in ids}  # absent id -> row 0
    x = np.nan_to_num(stats.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    buckets = np.minimum(np.floor(np.log2(1 + np.maximum(x, 0))), schema["stat_buckets"] - 1)
    feeds = {
        "user_embedding": tables["user"][[rows["user"].get(u, 0) for u in users]],
        "stat_buckets": buckets.astype(np.int64),
    }
    if n := schema["history_length"]:  # the tower pools that many clicked notes
        emb = np.zeros((len(users), n, tables["note"].shape[1]), np.float32)
        mask = np.zeros((len(users), n), np.float32)
        for b, notes in enumerate(history):
            for k, note in enumerate(notes[:n]):
                emb[b, k] = tables["note"][rows["note"].get(note, 0)]
                mask[b, k] = 1.0
        feeds |= {"history_embeddings": emb, "history_mask": mask}
    session = ort.InferenceSession(str(version / USER_TOWER), providers=["CPUExecutionProvider"])
    return session.run(["user"], feeds)[0]


@pytest.mark.parametrize("history", [0, 3])
def test_onnx_user_vectors_match_torch(tmp_path: Path, history: int) -> None:
    version = _publish(tmp_path, _trained(history))
    served = Retriever.from_snapshot(SnapshotReader(tmp_path, "retriever").latest())
    cols, _ = synthetic(60, seed=9, users=260)  # users beyond 200: unknown, row 0
    users = list(dict.fromkeys(cols.user_id))[:40]
    stats = np.random.default_rng(2).integers(0, 3000, (len(users), cols.user_stats.shape[1]))
    stats = stats.astype(np.float32)
    stats[0, :3] = [np.nan, -4, np.inf]  # missing counts bucket as 0
    hist = [[f"n{(7 * b + k) % 500}" for k in range(b % 5)] for b in range(len(users))]
    want = np.stack(
        [served.user_vector(u, s, h) for u, s, h in zip(users, stats, hist, strict=True)]
    )
    got = consumer_user_vectors(version, users, stats, hist if history else [[]] * len(users))
    assert any(u not in json.loads((version / "ids.json").read_text())["user"] for u in users)
    assert got.shape == want.shape == (len(users), served.dim)
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0)
    assert np.abs(want[1:] - want[:-1]).max() > 0.01  # the vectors differ: a real comparison


def test_onnx_item_tower_matches_published_item_vectors(tmp_path: Path) -> None:
    version = _publish(tmp_path, _trained(0))
    tables = st_load((version / "tables.safetensors").read_bytes())
    ids = json.loads((version / "ids.json").read_text())
    side = json.loads(bytes(st_load((version / DENSE).read_bytes())["side.notes"]))
    rows = {t: {i: j for j, i in enumerate(ids[t])} for t in ids}
    notes = ids["item"][:50]
    feeds = {
        "note_embedding": tables["note"][[rows["note"].get(n, 0) for n in notes]],
        "author_embedding": tables["author"][[rows["author"].get(side[n][0], 0) for n in notes]],
        "category_embedding": tables["category"][
            [rows["category"].get(side[n][1], 0) for n in notes]
        ],
    }
    session = ort.InferenceSession(str(version / ITEM_TOWER), providers=["CPUExecutionProvider"])
    got = session.run(["item"], feeds)[0]
    np.testing.assert_allclose(got, tables["item"][:50], atol=TOLERANCE, rtol=0)


def test_manifest_describes_every_tensor_and_row0(tmp_path: Path) -> None:
    version = _publish(tmp_path, _trained(0))
    manifest = json.loads((version / "manifest.json").read_text())
    assert {DENSE, TRAIN_STATE, USER_TOWER, ITEM_TOWER} <= set(manifest["files"])
    assert manifest["format_version"] == snapshots_module.FORMAT_VERSION
    for file, described in manifest["tensors"].items():
        stored = st_load((version / file).read_bytes())
        assert set(described) == set(stored), file
        for name, info in described.items():
            assert info["shape"] == list(stored[name].shape) and info["doc"], (file, name)
            assert info["dtype"] == str(stored[name].dtype)
    dense = st_load((version / DENSE).read_bytes())
    train = st_load((version / TRAIN_STATE).read_bytes())
    assert not any(k.startswith(("accum.", "last_seen.", "freq.")) for k in dense)
    assert any(k.startswith("accum.") for k in train) and "freq.gap" in train
    assert json.loads((version / "ids.json").read_text())["user"][0] == ""
    assert "row 0" in manifest["schema"]["row0"].lower()
    names = [i["name"] for i in manifest["schema"]["onnx"][USER_TOWER]["inputs"]]
    assert names == ["user_embedding", "stat_buckets"]


def test_snapshot_of_the_earlier_layout_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format 1: optimiser state inside dense.safetensors, no schema, no tensors, no exports."""
    state = _trained(0)
    old = tmp_path / "old"
    with monkeypatch.context() as m:
        m.setattr(snapshots_module, "TRAIN_STATE_PREFIXES", ())
        version = _publish(old, state)
    manifest = json.loads((version / "manifest.json").read_text())
    for key in ("tensors", "schema"):
        del manifest[key]
    for name in (USER_TOWER, ITEM_TOWER):
        del manifest["files"][name], manifest["sizes"][name]
        (version / name).unlink()
    manifest["format_version"] = 1
    (version / "manifest.json").write_text(json.dumps(manifest))
    assert "accum.user" in st_load((version / DENSE).read_bytes())

    new = _publish(tmp_path / "new", state)
    loaded_old = SnapshotReader(old, "retriever").latest()
    loaded_new = SnapshotReader(tmp_path / "new", "retriever").latest()
    assert loaded_old.manifest.format_version == 1 and (new / TRAIN_STATE).exists()
    assert set(loaded_old.dense) == set(loaded_new.dense)
    for key, value in loaded_new.dense.items():
        np.testing.assert_array_equal(loaded_old.dense[key], value)
    restored = RetrieverState.from_snapshot(loaded_old)
    assert restored.store["user"].accum.sum() == state.store["user"].accum.sum()
