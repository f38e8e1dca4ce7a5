"""The feature repo's files: the history view's empty batch part."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow.parquet as pq

from features.history import HISTORY_VIEW
from features.store import _empty_history_log


def test_jobs_applying_at_once_each_find_one_readable_empty_part(tmp_path: Path) -> None:
    """Jobs started together each apply the definitions: none may fail on the other's directory
    (a stats job did, with FileExistsError, when the joiner created it first)."""
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def apply() -> None:
        start.wait()
        try:
            _empty_history_log(tmp_path)
        except BaseException as exc:  # any failure, reported below
            errors.append(exc)

    threads = [threading.Thread(target=apply) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    directory = tmp_path / HISTORY_VIEW
    assert [p.name for p in directory.iterdir() if not p.name.startswith(".")] == [
        "part-empty.parquet"
    ]
    assert pq.read_table(directory / "part-empty.parquet").num_rows == 0


def test_an_empty_directory_gets_its_part_and_a_written_log_is_left_alone(tmp_path: Path) -> None:
    directory = tmp_path / HISTORY_VIEW
    directory.mkdir()
    _empty_history_log(tmp_path)
    assert (directory / "part-empty.parquet").exists()
    (directory / "part-empty.parquet").rename(directory / "part-0001.parquet")
    _empty_history_log(tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == ["part-0001.parquet"]
