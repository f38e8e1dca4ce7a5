"""Following snapshot announcements (kafka-python) on the real broker: new versions, refusals."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from learners import Snapshot, SnapshotSubscriber, follow_snapshots
from learners.errors import SnapshotCorruptError, SnapshotError, SnapshotFollowError
from learners.snapshots import (
    TABLES,
    Publication,
    SnapshotConfig,
    SnapshotReader,
    SnapshotWriter,
    TableRows,
)
from learners.subscription import kafka_announcer

MODEL = "retriever-x"


def _rows(n: int, rng: np.random.Generator, start: int = 0) -> dict[str, TableRows]:
    ids = [f"u{i}" for i in range(start, start + n)]
    return {"user": TableRows(ids, rng.standard_normal((n, 4), dtype=np.float32))}


def _next(sub: SnapshotSubscriber, timeout_s: float = 30) -> Snapshot | None:
    """The first snapshot `sub` yields within `timeout_s`, else None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        snap = sub.poll(0.2)
        if snap is not None:
            return snap
    return None


@pytest.mark.parametrize("announce_topic", [2], indirect=True)
def test_subscriber_yields_new_versions_and_refuses_a_corrupt_one(
    tmp_path: Path, bootstrap: str, announce_topic: str
) -> None:
    rng = np.random.default_rng(3)
    announce = kafka_announcer(bootstrap, announce_topic)
    writer = SnapshotWriter(tmp_path, MODEL, SnapshotConfig(root=tmp_path), announce)
    other = SnapshotWriter(tmp_path, "other", SnapshotConfig(root=tmp_path), announce)
    writer.publish_full(_rows(20, rng), {"w": np.ones(3, np.float32)}, 1, {})
    held = SnapshotReader(tmp_path, MODEL).latest()
    errors: list[SnapshotError] = []
    with SnapshotSubscriber(
        bootstrap, announce_topic, tmp_path, MODEL, current=held, on_error=errors.append
    ) as sub:
        assert sub.poll(0.5) is None  # the full is announced before: not new to the subscriber
        other.publish_full(_rows(3, rng), {}, 1, {})  # another model on the same topic: ignored
        delta = writer.publish_delta(_rows(5, rng, start=100), 2)
        snap = _next(sub)
        assert snap is not None and snap.manifest == delta
        assert snap.versions == (1, 2) and len(snap.tables["user"].ids) == 25
        assert sub.version == 2 and not errors

        silent = SnapshotWriter(tmp_path, MODEL, SnapshotConfig(root=tmp_path))
        bad = silent.publish_delta(_rows(5, rng, start=200), 3)
        path = tmp_path / MODEL / f"{bad.version:010d}" / TABLES
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
        announce(
            Publication(bad, {}, str(path.parent))
        )  # a corrupt version announced: refused, the state stays at version 2
        assert _next(sub, timeout_s=3) is None
        assert sub.version == 2
        assert [type(e) for e in errors] == [SnapshotCorruptError] and errors[0].version == 3

        full = writer.publish_full(_rows(30, rng), {"w": np.zeros(3, np.float32)}, 4, {})
        snap = _next(sub)
        assert snap is not None and snap.manifest == full and snap.versions == (full.version,)
        np.testing.assert_array_equal(snap.dense["w"], np.zeros(3, np.float32))
        assert len(errors) == 1  # the corrupt version is reported once


def test_follow_snapshots_from_the_beginning_until_stopped(
    tmp_path: Path, bootstrap: str, announce_topic: str
) -> None:
    rng = np.random.default_rng(4)
    writer = SnapshotWriter(
        tmp_path, MODEL, SnapshotConfig(root=tmp_path), kafka_announcer(bootstrap, announce_topic)
    )
    writer.publish_full(_rows(10, rng), {}, 1, {})
    writer.publish_delta(_rows(2, rng, start=50), 2)
    stop = threading.Event()
    got = []
    for snap in follow_snapshots(
        bootstrap,
        announce_topic,
        tmp_path,
        MODEL,
        stop=stop,
        from_beginning=True,
        poll_timeout_s=0.2,
    ):
        got.append(snap.manifest.version)
        stop.set()
    assert got == [2]  # the newest consistent state: the full with its delta


def test_a_missing_topic_is_explained(tmp_path: Path, bootstrap: str, topic_name: str) -> None:
    with pytest.raises(SnapshotFollowError, match="no such topic"):
        SnapshotSubscriber(bootstrap, f"{topic_name}-absent", tmp_path, MODEL)
