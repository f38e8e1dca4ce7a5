"""Run a dataflow in this process: alone or as one process of a cluster, with or without recovery.

Starting the other processes of a cluster is the launcher's business (`infra.jobs`); this module
only runs the flow here, given the cluster's addresses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from pydantic import BaseModel, ConfigDict, Field, model_validator

from streams.errors import RecoveryStoreError

RECOVERY_PARTITIONS = 4

log = logging.getLogger(__name__)


class RunConfig(BaseModel):
    """How a job runs."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    processes: int = Field(default=1, ge=1, le=64)
    """Number of processes (Kafka partitions are the unit of parallelism)."""
    process_id: int | None = None
    """This process's index when it is one of several; None for the launcher."""
    addresses: tuple[str, ...] = ()
    """host:port of every process of the cluster, in process order."""
    recovery_dir: Path | None = None
    """Bytewax recovery store; None runs without recovery."""
    snapshot_interval_s: float = Field(default=10.0, gt=0)
    """Epoch length: state is snapshotted (and Kafka offsets recorded) this often."""

    @model_validator(mode="after")
    def _check_cluster(self) -> RunConfig:
        if self.process_id is not None and self.process_id >= max(1, len(self.addresses)):
            raise ValueError(
                f"process_id {self.process_id} is not an index of the {len(self.addresses)} "
                "addresses: every process gets the same list of all the cluster's addresses"
            )
        return self


def ensure_recovery_dir(path: Path, create: bool = True, timeout_s: float = 60.0) -> None:
    """Make sure the recovery partitions exist, complete, before Bytewax lists them.

    One process creates them (`create`: alone, or process 0 of a cluster), in a staging
    directory moved into place file by file, so a partition file is never seen half made; the
    others wait until every partition is there. Bytewax lists the files it finds when it starts:
    a process that starts while another is still creating them sees some of the partitions, or
    a file without its tables, and the cluster then loses the snapshots routed to the others
    (seen in a 2-process soak: a restart resumed input offsets from the start beside later
    ingest state).

    Raises:
        RecoveryStoreError: the partitions did not appear within `timeout_s`.
    """
    path.mkdir(parents=True, exist_ok=True)
    if create and not _partitions(path):
        staging = Path(tempfile.mkdtemp(prefix=".init-", dir=path))
        try:
            init_db_dir(staging, RECOVERY_PARTITIONS)
            for part in sorted(staging.glob("part-*.sqlite3*")):
                os.replace(part, path / part.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    deadline = time.monotonic() + timeout_s
    while not _complete(path):
        if time.monotonic() > deadline:
            raise RecoveryStoreError(
                f"recovery store {path}: its partitions did not appear within {timeout_s:.0f} s "
                "(process 0 creates them): start process 0 of the cluster, or check the "
                "directory is shared by every process"
            )
        time.sleep(0.1)  # another process is creating them; nothing to await but the files


def _connect(part: Path, read_only: bool = False) -> contextlib.closing[sqlite3.Connection]:
    """A connection to a recovery partition that is closed when the block ends.

    Python's sqlite3 and Bytewax carry two copies of SQLite, and a process that has a file open
    through both loses the WAL: closing one copy's connection drops the other's POSIX locks, finds
    itself the last user and deletes the write-ahead log the other still writes to (every later
    snapshot of that partition went to a deleted file; seen in a 2-process soak). `with
    sqlite3.connect(...)` alone commits but does not close: this closes before Bytewax opens.
    """
    uri = f"file:{part}?mode=ro" if read_only else f"file:{part}"
    return contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30))


def _partitions(path: Path) -> list[Path]:
    return sorted(path.glob("part-*.sqlite3"))


def _complete(path: Path) -> bool:
    """Every partition file the store's count names is there (and lists itself)."""
    parts, counts = _partitions(path), set()
    for part in parts:
        try:
            with _connect(part, read_only=True) as db:
                counts |= {c for (c,) in db.execute("SELECT part_count FROM parts")}
        except sqlite3.Error:
            return False
    return len(counts) == 1 and len(parts) == counts.pop()


def resume_epoch(path: Path) -> int:
    """The epoch the next execution on the recovery store `path` resumes from.

    Bytewax's own rule (`RecoveryPart::resume_from`): in the newest execution, each worker's
    highest recorded frontier (the execution's resume epoch where it recorded none); the least
    of them. 1 for a store no execution has started on.
    """
    exs, fronts = [], []
    for part in _partitions(path):
        with _connect(part, read_only=True) as db:
            exs += db.execute("SELECT ex_num, worker_count, resume_epoch FROM exs").fetchall()
            fronts += db.execute(
                "SELECT ex_num, worker_index, worker_frontier FROM fronts"
            ).fetchall()
    if not exs:
        return 1
    ex_num, workers, start = max(exs)
    reached = dict.fromkeys(range(workers), start)
    for ex, worker, frontier in fronts:
        if ex == ex_num and worker in reached:
            reached[worker] = max(reached[worker], frontier)
    return min(reached.values())


def discard_unfinished(path: Path) -> int:
    """Delete the snapshots of epochs no execution finished; return how many.

    A job stopped mid-epoch (kill -9) leaves snapshots of epochs at or after the resume epoch.
    Bytewax keeps them, and loads the newest snapshot before the resume epoch of each state key:
    where the resumed execution does not snapshot a key in such an epoch (a partition that read
    nothing in it), a later resume loads the old execution's state for that key beside the new
    one's source offsets - state ahead of its input, valid events dropped as late or duplicate.
    Run before any process of the new execution starts (they wait for process 0 to form the
    cluster, and this runs first in it).
    """
    epoch = resume_epoch(path)
    dropped = 0
    for part in _partitions(path):
        with _connect(part) as db, db:
            dropped += db.execute("DELETE FROM snaps WHERE snap_epoch >= ?", (epoch,)).rowcount
    if dropped:
        log.warning(
            "recovery store %s: discarded %d snapshots of epochs >= %d that the stopped "
            "execution did not finish",
            path,
            dropped,
            epoch,
        )
    return dropped


def run_here(flow: Dataflow, run: RunConfig) -> None:
    """Run `flow` in this process (alone, or as process `run.process_id` of a cluster)."""
    recovery = None
    if run.recovery_dir is not None:
        first = not run.process_id  # alone, or process 0: before the cluster can form
        ensure_recovery_dir(run.recovery_dir, create=first)
        if first:
            discard_unfinished(run.recovery_dir)
        recovery = RecoveryConfig(str(run.recovery_dir))
    cluster = {}
    if run.process_id is not None:
        cluster = {"process_id": run.process_id, "addresses": list(run.addresses)}
    cli_main(
        flow,
        epoch_interval=timedelta(seconds=run.snapshot_interval_s),
        recovery_config=recovery,
        **cluster,
    )
