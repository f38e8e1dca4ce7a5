"""`streamrec run samples`: the sample joiner (interactions -> training-samples + parquet log)."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from infra import stack
from infra.config import load_settings

console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML settings file.")]
ProcessesOpt = Annotated[int, typer.Option(help="Processes (Kafka partitions split among them).")]
RecoveryOpt = Annotated[
    Path | None, typer.Option(help="Bytewax recovery store (resume after a crash).")
]
SnapshotOpt = Annotated[float, typer.Option(help="Seconds between recovery snapshots.")]
UntilEndOpt = Annotated[
    bool, typer.Option("--until-end", help="Bounded run: stop at the end of the topic.")
]
ProcessIdOpt = Annotated[int | None, typer.Option(hidden=True)]
AddressesOpt = Annotated[str | None, typer.Option(hidden=True)]
REPORT_EVERY_S = 30.0


class _Totals:
    """Sums the joiner's reports; prints them every `REPORT_EVERY_S` and at the end."""

    def __init__(self, where: str) -> None:
        self.counts: Counter = Counter()
        self.where = where
        self._last = time.monotonic()

    def add(self, report: object) -> None:
        self.counts.update(report.counts)
        if time.monotonic() - self._last >= REPORT_EVERY_S:
            self._last = time.monotonic()
            console.print(f"{self.where}: " + ", ".join(f"{k} {v:,}" for k, v in self.items()))

    def items(self) -> list[tuple[str, int]]:
        from streams.samples import REASONS

        return [(k, self.counts[k]) for k in REASONS if self.counts[k]]

    def table(self) -> Table:
        table = Table(title=f"sample joiner ({self.where})")
        table.add_column("count")
        table.add_column("value", justify="right")
        for k, v in self.items():
            table.add_row(k, f"{v:,}")
        return table


def run_samples(
    processes: ProcessesOpt = 1,
    recovery_dir: RecoveryOpt = None,
    snapshot_interval: SnapshotOpt = 10.0,
    until_end: UntilEndOpt = False,
    process_id: ProcessIdOpt = None,
    addresses: AddressesOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Labelled samples: impressions joined with their actions, to training-samples + parquet."""
    from bytewax.connectors.kafka import KafkaSink

    from streams.kafka_io import KafkaBatchSource, partitions_of
    from streams.runner import RunConfig, launch_cluster, run_here
    from streams.samples import SampleLogSink, build_flow
    from streams.sinks import CallbackSink

    if processes > 1 and process_id is None:
        argv = ["run", "samples", "--snapshot-interval", str(snapshot_interval)]
        argv += ["--until-end"] if until_end else []
        argv += ["--recovery-dir", str(recovery_dir)] if recovery_dir is not None else []
        argv += ["--config", str(config)] if config is not None else []
        raise typer.Exit(launch_cluster(argv, processes))
    settings = load_settings(config)
    where = stack.endpoints(settings)
    topics = settings.kafka.topics
    cfg = settings.samples
    totals = _Totals("all partitions" if process_id is None else f"process {process_id}")
    flow = build_flow(
        KafkaBatchSource(where.bootstrap, topics.interactions, tail=not until_end),
        KafkaSink([where.bootstrap], topics.training_samples),
        SampleLogSink(cfg.log_dir, cfg.log_rows_per_part, cfg.log_part_interval_s),
        KafkaSink([where.bootstrap], topics.dlq),
        CallbackSink(totals.add),
        cfg,
        partitions_of(where.bootstrap, topics.interactions),
        recoverable=recovery_dir is not None,
    )
    run = RunConfig(
        processes=processes,
        process_id=process_id,
        addresses=tuple(addresses.split(";")) if addresses else (),
        recovery_dir=recovery_dir,
        snapshot_interval_s=snapshot_interval,
    )
    run_here(flow, run)
    console.print(totals.table())
    console.print(f"parquet log: {cfg.log_dir}")
