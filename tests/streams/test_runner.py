"""Running a flow with recovery: a resume never loads a snapshot of an unfinished epoch."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig
from bytewax.testing import TestingSink, TestingSource, run_main

from streams.errors import RecoveryStoreError
from streams.runner import discard_unfinished, ensure_recovery_dir, resume_epoch


def rows(path: Path, sql: str, *args: object) -> None:
    """Run `sql` on recovery partition 0 (Bytewax reads every table across all partitions)."""
    with sqlite3.connect(path / "part-0.sqlite3") as db:
        db.execute(sql, args)


def snaps(path: Path) -> set[tuple[str, str, int]]:
    out = set()
    for part in path.glob("part-*.sqlite3"):
        with sqlite3.connect(part) as db:
            out |= set(db.execute("SELECT step_id, state_key, snap_epoch FROM snaps"))
    return out


def test_a_killed_executions_unfinished_epochs_are_discarded_before_the_next(
    tmp_path: Path,
) -> None:
    """The store a 2-process stats job left when killed mid-epoch (recorded in a soak): both
    workers reached frontier 2, the input and the ingest step had already snapshotted epoch 2.
    Resuming at 2 loads epoch 1; the epoch-2 snapshots must go, or a later resume whose
    execution did not snapshot that key in epoch 2 (a partition that read nothing in it) loads
    this execution's ingest state beside the later execution's input offsets."""
    ensure_recovery_dir(tmp_path)
    rows(tmp_path, "INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (0, 2, 1)")
    for worker in (0, 1):
        rows(tmp_path, "INSERT INTO fronts VALUES (CURRENT_TIMESTAMP, 0, ?, 2)", worker)
    for step, key, epoch in [("in", "1", 1), ("in", "1", 2), ("ingest", "1", 2)]:
        rows(
            tmp_path,
            "INSERT INTO snaps VALUES (CURRENT_TIMESTAMP, ?, ?, ?, x'00')",
            step,
            key,
            epoch,
        )
    assert resume_epoch(tmp_path) == 2
    assert discard_unfinished(tmp_path) == 2
    assert snaps(tmp_path) == {("in", "1", 1)}
    # The next execution resumed at 2; one worker recorded frontier 5, the other none yet: the
    # resume epoch is still 2 (the execution's own), and its epoch-2..4 snapshots go too.
    rows(tmp_path, "INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (1, 2, 2)")
    rows(tmp_path, "INSERT INTO fronts VALUES (CURRENT_TIMESTAMP, 1, 0, 5)")
    rows(tmp_path, "INSERT INTO snaps VALUES (CURRENT_TIMESTAMP, 'in', '1', 3, x'00')")
    assert resume_epoch(tmp_path) == 2
    assert discard_unfinished(tmp_path) == 1
    rows(tmp_path, "INSERT INTO fronts VALUES (CURRENT_TIMESTAMP, 1, 1, 4)")
    assert resume_epoch(tmp_path) == 4


def test_the_resume_epoch_is_the_one_bytewax_resumes_from(tmp_path: Path) -> None:
    """Run a recoverable flow three times on one store: before each later run, `resume_epoch`
    equals the epoch that run records as its start."""
    ensure_recovery_dir(tmp_path)
    assert resume_epoch(tmp_path) == 1
    expected = []
    for run in range(3):
        flow = Dataflow("counting")
        items = op.input("in", flow, TestingSource(range(run * 10, run * 10 + 10), batch_size=3))
        keyed = op.key_on("key", items, lambda x: str(x % 2))
        summed = op.stateful_map("sum", keyed, lambda s, x: ((s or 0) + x,) * 2)
        op.output("out", summed, TestingSink([]))
        expected.append(resume_epoch(tmp_path))
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(tmp_path)))
    started = []
    for part in sorted(tmp_path.glob("part-*.sqlite3")):
        with sqlite3.connect(part) as db:
            started += db.execute("SELECT ex_num, resume_epoch FROM exs").fetchall()
    assert [epoch for _, epoch in sorted(started)] == expected
    assert expected[2] > expected[1] > expected[0] == 1


LISTER = """
import sqlite3, sys, time
from pathlib import Path
from streams.errors import RecoveryStoreError
from streams.runner import ensure_recovery_dir
path, create, start = Path(sys.argv[1]), sys.argv[2] == "1", float(sys.argv[3])
while time.time() < start:
    pass
ensure_recovery_dir(path, create=create)
found = []
for part in sorted(path.glob("*.sqlite3")):  # what Bytewax lists when it starts
    with sqlite3.connect(part) as db:
        found += [i for (i,) in db.execute("SELECT part_index FROM parts")]
print(sorted(found))
"""


def test_processes_starting_together_all_see_every_partition(tmp_path: Path) -> None:
    """Process 0 creates the store while process 1 starts: before, process 1 saw one partition,
    none, a file without tables, or died on a locked database, about every other time."""
    for run in range(6):
        path, start = tmp_path / f"store-{run}", time.time() + 1.5
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", LISTER, str(path), create, str(start)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for create in ("1", "0")
        ]
        outs = [p.communicate(timeout=60)[0].strip() for p in procs]
        assert outs == ["[0, 1, 2, 3]"] * 2, outs


def test_a_process_waiting_for_partitions_nobody_creates_says_so(tmp_path: Path) -> None:
    with pytest.raises(RecoveryStoreError, match="process 0 creates them"):
        ensure_recovery_dir(tmp_path, create=False, timeout_s=0.3)
