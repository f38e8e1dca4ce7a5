"""Run a dataflow in this process: alone or as one process of a cluster, with or without recovery.

Starting the other processes of a cluster is the launcher's business (`infra.jobs`); this module
only runs the flow here, given the cluster's addresses.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from pydantic import BaseModel, ConfigDict, Field

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
