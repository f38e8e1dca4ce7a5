"""`streamrec run <job>`: one command per streaming job, generated from `infra.jobs.JOBS`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from infra.cli_options import ConfigOpt, UntilEndOpt, settings_from
from infra.jobs import JOBS, JobSpec, cluster_argv, launch_cluster, run_job
from streams.runner import RunConfig

run_app = typer.Typer(help="Deploy a streaming job.", no_args_is_help=True)

ProcessesOpt = Annotated[int, typer.Option(help="Processes (Kafka partitions split among them).")]
RecoveryDirOpt = Annotated[
    Path | None, typer.Option(help="Bytewax recovery store (resume after a crash).")
]
RecoveryOpt = Annotated[
    bool,
    typer.Option(
        "--recovery", help="Recover from <data_dir>/recovery/<job> (resume after a crash)."
    ),
]
SnapshotOpt = Annotated[float, typer.Option(help="Seconds between recovery snapshots.")]
ProcessIdOpt = Annotated[int | None, typer.Option(hidden=True)]
AddressesOpt = Annotated[str | None, typer.Option(hidden=True)]


def _command(spec: JobSpec):
    def command(
        processes: ProcessesOpt = 1,
        recovery: RecoveryOpt = False,
        recovery_dir: RecoveryDirOpt = None,
        snapshot_interval: SnapshotOpt = 10.0,
        until_end: UntilEndOpt = False,
        process_id: ProcessIdOpt = None,
        addresses: AddressesOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        settings = settings_from(config)
        if recovery and recovery_dir is None:
            recovery_dir = settings.paths.recovery(spec.name)
        if processes > 1 and process_id is None:
            argv = cluster_argv(spec.name, until_end, recovery_dir, snapshot_interval, config)
            raise typer.Exit(launch_cluster(argv, processes))
        run = RunConfig(
            processes=processes,
            process_id=process_id,
            addresses=tuple(addresses.split(";")) if addresses else (),
            recovery_dir=recovery_dir,
            snapshot_interval_s=snapshot_interval,
        )
        run_job(spec, settings, run, until_end)

    command.__doc__ = spec.summary
    command.__name__ = f"run_{spec.name}"
    return command


for _spec in JOBS.values():
    run_app.command(_spec.name)(_command(_spec))
