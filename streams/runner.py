"""Run a dataflow: one process or several (`-i/-a` style), with or without Bytewax recovery."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from pydantic import BaseModel, ConfigDict, Field

from infra.stack import free_port

RECOVERY_PARTITIONS = 4


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


def ensure_recovery_dir(path: Path) -> None:
    """Create the recovery partitions the first time a job runs with this directory."""
    path.mkdir(parents=True, exist_ok=True)
    if not any(path.glob("part-*.sqlite3")):
        init_db_dir(path, RECOVERY_PARTITIONS)


def run_here(flow: Dataflow, run: RunConfig) -> None:
    """Run `flow` in this process (alone, or as process `run.process_id` of a cluster)."""
    recovery = None
    if run.recovery_dir is not None:
        ensure_recovery_dir(run.recovery_dir)
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


def launch_cluster(argv: list[str], processes: int) -> int:
    """Start `processes` copies of this CLI command as one Bytewax cluster and wait for them.

    Args:
        argv: the command's own arguments (without `--processes`); each copy gets
            `--process-id I --addresses A` appended.

    Returns:
        0 if every process exited 0, else the first non-zero exit code.
    """
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "infra.cli",
                *argv,
                "--process-id",
                str(i),
                "--addresses",
                addresses,
            ]
        )
        for i in range(processes)
    ]
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c != 0), 0)
