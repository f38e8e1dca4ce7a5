"""The snapshot store on an object store: the local S3-API server (moto) behind an s3:// URL."""

from __future__ import annotations

import fsspec
import numpy as np
import pytest
from typer.testing import CliRunner

from infra.cli import app
from learners.errors import SnapshotConflictError, SnapshotCorruptError
from learners.snapshots import (
    MANIFEST,
    TABLES,
    SnapshotConfig,
    SnapshotReader,
    SnapshotWriter,
    check_writable,
    list_models,
)
from tests.learners.test_snapshots import as_dict, rows

MODEL = "mmoe"


def _publish(url: str, rng: np.random.Generator, keep_full: int = 3):
    """A full and two deltas on `url`; returns the writer and the reference state."""
    config = SnapshotConfig(root="/nonexistent", url=url, keep_full=keep_full)
    writer = SnapshotWriter(config.location, MODEL, config)
    full = {"user": rows("u", 40, 8, rng), "note": rows("n", 30, 8, rng)}
    dense = {"w": rng.standard_normal((3, 4), dtype=np.float32)}
    writer.publish_full(full, dense, hwm_ms=1, meta={"lr": 0.1})
    state = {name: as_dict(t) for name, t in full.items()}
    for step in range(2):
        delta = {"user": rows("u", 5, 8, rng, start=38 + step * 3)}  # 2 changed, 3 new
        writer.publish_delta(delta, hwm_ms=2 + step)
        state["user"].update(as_dict(delta["user"]))
    return writer, state, dense


def test_publish_and_read_back_through_s3(s3_url: str) -> None:
    """A full and its deltas published to s3:// read back equal to the reference, from a reader
    that has only the URL (another replica)."""
    rng = np.random.default_rng(3)
    check_writable(s3_url, [MODEL])
    _, state, dense = _publish(s3_url, rng)
    reader = SnapshotReader(s3_url, MODEL)
    assert [m.version for m in reader.versions()] == [1, 2, 3]
    snap = reader.latest(strict=True)
    assert snap.versions == (1, 2, 3)
    for name, want in state.items():
        got = as_dict(snap.tables[name])
        assert list(got) == list(want), name
        np.testing.assert_array_equal(np.stack(list(got.values())), np.stack(list(want.values())))
    np.testing.assert_array_equal(snap.dense["w"], dense["w"])
    assert list_models(s3_url) == [MODEL]


def test_a_version_without_its_manifest_is_invisible_and_numbers_go_on(s3_url: str) -> None:
    """Files of a publish cut short (no manifest yet) are not a version; the next publish
    takes the number and the store stays consistent."""
    rng = np.random.default_rng(4)
    writer, _, _ = _publish(s3_url, rng)
    fs = fsspec.filesystem("s3")
    bucket_path = s3_url.removeprefix("s3://")
    fs.pipe_file(f"{bucket_path}/{MODEL}/0000000004/{TABLES}", b"half a publish")
    reader = SnapshotReader(s3_url, MODEL)
    assert [m.version for m in reader.versions()] == [1, 2, 3]
    assert reader.problems() == []
    delta = {"note": rows("n", 2, 8, rng)}
    manifest = writer.publish_delta(delta, hwm_ms=9)
    assert manifest.version == 4
    assert reader.latest(strict=True).versions == (1, 2, 3, 4)


def test_a_damaged_object_is_detected_and_skipped(s3_url: str) -> None:
    """A delta whose table object was replaced is reported and the reader falls back to the
    version before it."""
    rng = np.random.default_rng(5)
    _publish(s3_url, rng)
    fs = fsspec.filesystem("s3")
    path = f"{s3_url.removeprefix('s3://')}/{MODEL}/0000000003/{TABLES}"
    data = bytearray(fs.cat_file(path))
    data[-1] ^= 0xFF  # same size, other bytes: only the checksum can tell
    fs.pipe_file(path, bytes(data))
    reader = SnapshotReader(s3_url, MODEL, on_fallback=lambda _exc: None)
    assert reader.latest().versions == (1, 2)
    with pytest.raises(SnapshotCorruptError, match="sha256"):
        reader.latest(strict=True)


def test_prune_removes_old_versions_whole(s3_url: str) -> None:
    """Beyond keep_full fulls, older versions (manifest first) are deleted from the bucket."""
    rng = np.random.default_rng(6)
    writer, _, _ = _publish(s3_url, rng, keep_full=1)
    writer.publish_full({"user": rows("u", 4, 8, rng)}, {}, hwm_ms=5, meta={})
    reader = SnapshotReader(s3_url, MODEL)
    assert [m.version for m in reader.versions()] == [4]
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    left = fs.find(f"{s3_url.removeprefix('s3://')}/{MODEL}")
    assert all("/0000000004/" in p for p in left), left
    assert any(p.endswith(MANIFEST) for p in left)


def test_snapshots_list_reads_a_url(s3_url: str) -> None:
    """`streamrec snapshots list --root s3://...` lists what a replica would load."""
    _publish(s3_url, np.random.default_rng(7))
    result = CliRunner().invoke(app, ["snapshots", "list", "--root", s3_url])
    assert result.exit_code == 0, result.output
    assert MODEL in result.output


def test_a_second_writer_of_the_same_version_is_refused(s3_url: str) -> None:
    """No lock on an object store: a writer about to put a version that another writer has
    published meanwhile stops instead of overwriting it."""
    rng = np.random.default_rng(8)
    writer, _, _ = _publish(s3_url, rng)
    before = SnapshotReader(s3_url, MODEL).latest(strict=True)
    with pytest.raises(SnapshotConflictError, match="one learner per model"):
        writer._put(3, {TABLES: b"other"}, b"{}")  # version 3 exists: the race's loser
    after = SnapshotReader(s3_url, MODEL).latest(strict=True)
    assert after.manifest == before.manifest
