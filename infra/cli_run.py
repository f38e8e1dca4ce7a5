"""`streamrec run <job>`: one command per streaming job, generated from `infra.jobs.JOBS`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from infra.cli_options import ConfigOpt, UntilEndOpt, console, services, settings_from
from infra.config import Settings
from infra.jobs import (
    JOBS,
    RESETS,
    JobSpec,
    cluster_argv,
    launch_cluster,
    reset_recovery,
    run_job,
    say,
)
from streams.runner import RunConfig

run_app = typer.Typer(help="Deploy a streaming job.", no_args_is_help=True)

ProcessesOpt = Annotated[
    int, typer.Option(min=1, max=64, help="Processes (Kafka partitions split among them).")
]
RecoveryDirOpt = Annotated[
    Path | None, typer.Option(help="Bytewax recovery store (resume after a crash).")
]
RecoveryOpt = Annotated[
    bool,
    typer.Option(
        "--recovery", help="Recover from <data_dir>/recovery/<job> (resume after a crash)."
    ),
]
SnapshotOpt = Annotated[float, typer.Option(min=0.001, help="Seconds between recovery snapshots.")]
ResetOpt = Annotated[
    str | None,
    typer.Option(
        help="Start over: `earliest` moves the recovery store aside (state and offsets, kept as "
        "<dir>.discarded-<time>) and reads the topic from its beginning. The command to run "
        "when the store's offsets do not belong to the topic (the broker lost it).",
    ),
]
MetricsPortOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        max=65_535,
        help="Serve Prometheus metrics at http://<metrics.host>:PORT/metrics (process i of "
        "--processes N at PORT + i); 0: none. Default: `metrics.port` of the settings (0).",
    ),
]
KAFKA_ONLY = frozenset({"validate"})
"""Jobs that need no Redis (the others are not started while it does not answer)."""
ProcessIdOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Run as this process of a cluster (with --addresses). Default: `cluster.process_id` "
        "of the settings ($STREAMREC_PROCESS_ID) when `cluster.hosts` is set.",
    ),
]
AddressesOpt = Annotated[
    str | None,
    typer.Option(
        help="host:port of every process of the cluster, ';'-separated, in process order. "
        "Default: from `cluster.hosts` and `cluster.ports` of the settings.",
    ),
]


def _command(spec: JobSpec):
    def command(
        processes: ProcessesOpt = 1,
        recovery: RecoveryOpt = False,
        recovery_dir: RecoveryDirOpt = None,
        snapshot_interval: SnapshotOpt = 10.0,
        until_end: UntilEndOpt = False,
        reset: ResetOpt = None,
        metrics_port: MetricsPortOpt = None,
        process_id: ProcessIdOpt = None,
        addresses: AddressesOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        settings = settings_from(config)
        reset_by = process_id  # who applies --reset: the launcher, or process 0 of hosts
        if settings.cluster.hosts and addresses is None:  # before anything is contacted
            process_id, addresses, processes = _host_process(
                spec.name, settings, process_id, processes
            )
            if reset is not None:
                _reset_on_first_host(process_id)
                reset_by = None
        services(settings, redis=spec.name not in KAFKA_ONLY)
        if recovery and recovery_dir is None:
            recovery_dir = settings.paths.recovery(spec.name)
        if reset is not None:
            _reset(reset, recovery_dir, reset_by)
        if processes > 1 and process_id is None:
            argv = cluster_argv(
                spec.name, until_end, recovery_dir, snapshot_interval, config, metrics_port
            )
            store = f"recovery {recovery_dir}" if recovery_dir else "no recovery store"
            say(
                f"{spec.name}: starting {processes} processes on "
                f"{settings.kafka.topics.interactions}"
                f"{' until its end' if until_end else ' (unbounded)'}; {store}"
            )
            started = time.monotonic()
            code = launch_cluster(argv, processes)
            took = time.monotonic() - started
            say(f"{spec.name}: {processes} processes ended in {took:,.1f} s (exit {code})")
            raise typer.Exit(code)
        run = RunConfig(
            processes=processes,
            process_id=process_id,
            addresses=tuple(addresses.split(";")) if addresses else (),
            recovery_dir=recovery_dir,
            snapshot_interval_s=snapshot_interval,
        )
        hint = _reset_hint(spec.name, recovery, recovery_dir, config, processes, addresses)
        run_job(spec, settings, run, until_end, reset_hint=hint, metrics_base=metrics_port)

    command.__doc__ = spec.summary
    command.__name__ = f"run_{spec.name}"
    return command


def _host_process(
    job: str, settings: Settings, process_id: int | None, processes: int
) -> tuple[int, str, int]:
    """(process id, addresses, process count) of this host's process of a multi-host job."""
    hosts = settings.cluster.hosts
    if process_id is None:
        process_id = settings.cluster.process_id
    if process_id is None:
        raise typer.BadParameter(
            f"cluster.hosts names {len(hosts)} hosts but not which one this is: set "
            "STREAMREC_PROCESS_ID (its index in cluster.hosts) or pass --process-id"
        )
    if process_id >= len(hosts):
        raise typer.BadParameter(
            f"--process-id {process_id} is not an index of the {len(hosts)} cluster.hosts"
        )
    if processes not in (1, len(hosts)):
        raise typer.BadParameter(
            f"--processes {processes} differs from the {len(hosts)} cluster.hosts: with hosts "
            "configured each host runs one process; omit --processes"
        )
    return process_id, ";".join(settings.cluster.addresses(job)), len(hosts)


def _reset_on_first_host(process_id: int) -> None:
    """`--reset` of a multi-host job: applied by process 0 (every host stopped first)."""
    if process_id != 0:
        raise typer.BadParameter(
            "--reset of a multi-host job is applied on the host of process 0, with the job "
            'stopped on every host (docs/operations.md, "Jobs across hosts")'
        )


def _reset(reset: str, recovery_dir: Path | None, process_id: int | None) -> None:
    """Apply `--reset` before anything reads the store (once: in the launcher, never in a
    process of a cluster, which would race the others)."""
    if reset not in RESETS:
        raise typer.BadParameter(f"--reset must be one of {', '.join(RESETS)}, not {reset!r}")
    if process_id is not None:
        raise typer.BadParameter("--reset is applied by the launcher: omit --process-id")
    if recovery_dir is None:
        console.print("--reset: no recovery store (--recovery / --recovery-dir): nothing to reset")
        return
    aside = reset_recovery(recovery_dir)
    if aside is None:
        console.print(f"--reset: {recovery_dir} holds no recovery store: nothing to reset")
    else:
        console.print(f"--reset {reset}: recovery store moved to {aside}; reading from the start")


def _reset_hint(
    job: str,
    recovery: bool,
    recovery_dir: Path | None,
    config: Path | None,
    processes: int,
    addresses: str | None,
) -> str:
    """The command that starts this job over, as the operator would type it."""
    argv = ["streamrec", "run", job]
    if recovery:
        argv.append("--recovery")
    elif recovery_dir is not None:
        argv += ["--recovery-dir", str(recovery_dir)]
    argv += ["--config", str(config)] if config is not None else []
    count = len(addresses.split(";")) if addresses else processes
    argv += ["--processes", str(count)] if count > 1 else []
    return " ".join([*argv, "--reset", "earliest"])


for _spec in JOBS.values():
    run_app.command(_spec.name)(_command(_spec))
