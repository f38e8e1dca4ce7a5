"""The snapshot watcher: deltas and fulls swapped in whole, announcements on a real topic."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from infra.stack import ensure_topics
from learners.models import ITEM_TABLE
from learners.online import OnlineLearner
from learners.snapshots import (
    SnapshotConfig,
    SnapshotReader,
    SnapshotWriter,
    TableRows,
)
from learners.subscription import kafka_announcer
from serving.config import ServingConfig
from serving.errors import NotReadyError
from serving.watcher import ModelView, SnapshotWatcher
from tests.learners.helpers import CONFIG, Clock, messages, publish_trained


def _wait_for(watcher: SnapshotWatcher, version: int, timeout_s: float = 45) -> ModelView:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = watcher.current()
        if view.versions["retriever"] == version:
            return view
        time.sleep(0.01)
    raise AssertionError(f"retriever version {version} not served: {watcher.last_error}")


def _problems(view: ModelView) -> list[str]:
    """What is inconsistent in one view (empty when models and index are of one version)."""
    out = []
    if view.retriever.version != view.versions["retriever"]:
        out.append(f"retriever {view.retriever.version} in a view of {view.versions}")
    if view.ranker.version != view.versions["ranker"]:
        out.append(f"ranker {view.ranker.version} in a view of {view.versions}")
    ids, vectors = view.retriever.item_vectors()
    held = dict(view.index.items())
    if set(held) != set(ids) or len(view.index) != len(ids):
        out.append(f"index of {len(view.index)} notes, retriever {len(ids)}")
    elif any(not np.array_equal(held[n], vectors[j]) for j, n in enumerate(ids)):
        out.append(f"index vectors differ from retriever version {view.retriever.version}")
    return out


def _unit(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_deltas_and_fulls_swap_in_whole_while_requests_read(tmp_path: Path) -> None:
    publish_trained(tmp_path)
    snaps = SnapshotConfig(root=tmp_path)
    base = SnapshotReader(tmp_path, "retriever").latest()
    items = base.tables[ITEM_TABLE]
    dim, rng = items.weights.shape[1], np.random.default_rng(0)
    watcher = SnapshotWatcher(tmp_path, "ranker", "retriever", ServingConfig(poll_interval_s=0.02))
    assert watcher.refresh()
    first = watcher.current()
    assert first.versions == {"ranker": 1, "retriever": 1} and not _problems(first)

    seen: dict[int, int] = {}
    problems: list[str] = []
    stop = threading.Event()

    def requests() -> None:  # what a request does: take the view once, use only it
        while not stop.is_set():
            view = watcher.current()
            problems.extend(_problems(view))
            seen[view.versions["retriever"]] = view.index.build_id
            time.sleep(0.005)  # pacing: a busy loop would hold the GIL from the watcher

    reader = threading.Thread(target=requests)
    watcher.start()
    reader.start()
    writer = SnapshotWriter(tmp_path, "retriever", snaps)
    try:
        for k in range(1, 6):
            changed = [items.ids[j] for j in rng.choice(len(items.ids), 20, replace=False)]
            fresh = [f"new{k}-{i}" for i in range(5)]
            m = writer.publish_delta(
                {ITEM_TABLE: TableRows([*changed, *fresh], _unit(25, dim, rng))},
                base.manifest.hwm_ms + k,
            )
            view = _wait_for(watcher, m.version)
            assert set(fresh) <= {n for n, _ in view.index.items()}
            assert view.index.search(dict(view.index.items())[fresh[0]], 1)[0] == [fresh[0]]
        last_delta = watcher.current()
        assert last_delta.index.build_id == first.index.build_id  # deltas: no rebuild
        assert len(last_delta.index) == len(items.ids) + 25

        kept = items.ids[: len(items.ids) // 2]  # a new full without half the notes
        tables = {**base.tables, ITEM_TABLE: TableRows(kept, _unit(len(kept), dim, rng))}
        full = writer.publish_full(
            tables, base.dense, base.manifest.hwm_ms + 10, base.manifest.meta
        )
        view = _wait_for(watcher, full.version)
        assert view.index.build_id != first.index.build_id  # a full: rebuilt
        assert {n for n, _ in view.index.items()} == set(kept)
        deadline = time.monotonic() + 5
        while seen.get(full.version) is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        reader.join(10)
        watcher.stop()
    assert not problems, problems[:3]
    assert set(seen) == {1, 2, 3, 4, 5, 6, 7}, seen  # every version was served and read
    assert first.versions == {"ranker": 1, "retriever": 1} and not _problems(first)  # untouched


@pytest.mark.parametrize("inline_max_bytes", [0, 900_000], ids=["by-reference", "carried"])
def test_watcher_follows_announcements_on_the_topic(
    tmp_path: Path, bootstrap: str, topic_name: str, inline_max_bytes: int
) -> None:
    """Deltas announced by reference wake the store poll; deltas carried in their
    announcements are applied from them."""
    snapshots = publish_trained(tmp_path)
    # a poll interval far beyond the test: only an announcement can bring a version in time
    watcher = SnapshotWatcher(tmp_path, "ranker", "retriever", ServingConfig(poll_interval_s=600))
    assert watcher.refresh()
    first = watcher.current()
    assert not watcher.refresh()  # nothing new

    topic = f"{topic_name}-snapshots"
    ensure_topics(bootstrap, [topic], 1)
    watcher.start(bootstrap, topic)
    try:
        clock = Clock()
        learner = OnlineLearner.from_latest(
            CONFIG,
            snapshots,
            announce=kafka_announcer(bootstrap, topic, inline_max_bytes=inline_max_bytes),
            clock=clock,
        )
        deadline = time.monotonic() + 45  # ~2 s on a quiet machine
        while min(watcher.current().versions.values()) == 1 and time.monotonic() < deadline:
            for m in messages(seed=21, n=600, users=300, t0=2 * 10**9):
                learner.add(m)
            clock.now += 11
            learner.flush()
            learner.tick()
            time.sleep(0.5)
        assert watcher.swaps > 1, "the announcements did not reach the watcher"
        second = watcher.current()
        assert second.versions["ranker"] > 1 and second.versions["retriever"] > 1
        assert not _problems(second)
        assert first.versions == {"ranker": 1, "retriever": 1} and not _problems(first)
        assert (watcher.carried > 0) == (inline_max_bytes > 0)
    finally:
        watcher.stop()


def test_no_snapshot_is_explained(tmp_path: Path) -> None:
    watcher = SnapshotWatcher(tmp_path, "ranker", "retriever", ServingConfig())
    assert not watcher.refresh()
    with pytest.raises(NotReadyError, match="learn full"):
        watcher.current()


def test_a_replica_given_only_the_store_url_serves_the_same_models(
    tmp_path: Path, s3_url: str
) -> None:
    """A serving replica on another host reads the snapshots from the object store (s3:// on the
    local S3-API server): the same versions, item vectors and index as one reading the disk."""
    import fsspec

    publish_trained(tmp_path)
    fsspec.filesystem("s3").put(f"{tmp_path}/", s3_url.removeprefix("s3://"), recursive=True)
    views = []
    for root in (tmp_path, s3_url):
        watcher = SnapshotWatcher(root, "ranker", "retriever", ServingConfig())
        watcher.refresh()
        views.append(watcher.current())
    local, remote = views
    assert remote.versions == local.versions
    assert _problems(remote) == []
    ids, vectors = remote.retriever.item_vectors()
    want_ids, want = local.retriever.item_vectors()
    assert list(ids) == list(want_ids)
    np.testing.assert_array_equal(vectors, want)
