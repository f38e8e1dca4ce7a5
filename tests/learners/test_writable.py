"""Training starts only when its snapshots can be written: an unwritable root fails at once."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

import learners.snapshots as snapshots_mod
from features.samples import samples_table
from learners.errors import LearnersError, SnapshotRootNotWritableError
from learners.full import run_full
from learners.online import OnlineLearner
from learners.snapshots import SnapshotConfig
from tests.learners.helpers import CONFIG, publish_trained, synthetic, to_batch

FAST_S = 0.5


def _writable(directory: Path) -> bool:
    probe = directory / ".probe"
    try:
        probe.write_bytes(b"x")
    except OSError:
        return False
    probe.unlink()
    return True


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], None]]:
    """Make a directory unwritable: mode 0555, or the immutable flag where root ignores modes."""
    done: list[tuple[Path, str]] = []

    def make(directory: Path) -> None:
        directory.chmod(0o555)
        done.append((directory, "chmod"))
        if _writable(directory):  # root: modes do not apply
            if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode:
                pytest.skip("cannot make a directory read-only here (root, no chattr)")
            done.append((directory, "chattr"))
        if _writable(directory):
            pytest.skip("cannot make a directory read-only here")

    yield make
    for directory, how in reversed(done):
        if how == "chattr":
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        else:
            directory.chmod(0o755)


def _sample_log(directory: Path) -> Path:
    directory.mkdir()
    cols, _ = synthetic(2_000, seed=41)
    pq.write_table(samples_table(to_batch(cols, "log").samples), directory / "part-0.parquet")
    return directory


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "snapshots"
    root.mkdir()
    return root


@pytest.mark.serial
def test_full_training_fails_at_once_on_a_read_only_root(
    tmp_path: Path, read_only: Callable[[Path], None]
) -> None:
    log = _sample_log(tmp_path / "log")
    root = _root(tmp_path)
    read_only(root)
    t0 = time.perf_counter()
    with pytest.raises(SnapshotRootNotWritableError) as err:
        run_full(log, CONFIG, SnapshotConfig(root=root))
    assert time.perf_counter() - t0 < FAST_S
    assert str(root) in str(err.value) and "snapshots.root" in str(err.value)
    assert isinstance(err.value, LearnersError)


@pytest.mark.serial
def test_online_learner_fails_at_once_when_a_model_directory_is_read_only(
    tmp_path: Path, read_only: Callable[[Path], None]
) -> None:
    snapshots = publish_trained(tmp_path)
    read_only(tmp_path / "retriever")
    t0 = time.perf_counter()
    with pytest.raises(SnapshotRootNotWritableError, match="not writable") as err:
        OnlineLearner.from_latest(CONFIG, snapshots)
    assert time.perf_counter() - t0 < FAST_S
    assert str(tmp_path / "retriever") in str(err.value)


def test_a_root_without_room_for_the_next_fulls_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshots = publish_trained(tmp_path)
    monkeypatch.setattr(snapshots_mod, "_free_bytes", lambda _path: 1024)
    with pytest.raises(SnapshotRootNotWritableError, match="MiB free"):
        OnlineLearner.from_latest(CONFIG, snapshots)
    monkeypatch.undo()
    OnlineLearner.from_latest(CONFIG, snapshots)  # room enough: starts
    assert not [p for p in tmp_path.rglob(".tmp-probe-*")]  # the probes are gone


def test_a_root_that_is_a_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "file"
    root.write_text("not a directory")
    with pytest.raises(SnapshotRootNotWritableError, match=str(root)):
        run_full(tmp_path, CONFIG, SnapshotConfig(root=root))


@pytest.mark.serial
def test_learn_full_prints_the_error_and_exits_2(
    tmp_path: Path, read_only: Callable[[Path], None]
) -> None:
    from infra.cli import app

    log = _sample_log(tmp_path / "log")
    root = _root(tmp_path)
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"snapshots": {"root": str(root)}}))
    read_only(root)
    env = {**os.environ, "STREAMREC_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "300"}
    t0 = time.perf_counter()
    done = CliRunner().invoke(
        app,
        ["learn", "full", "--no-announce", "--log-dir", str(log), "--config", str(config)],
        env=env,
    )
    assert time.perf_counter() - t0 < FAST_S
    assert done.exit_code == 2, done.output
    assert "error:" in done.output and str(root) in done.output
    assert "not writable" in done.output
