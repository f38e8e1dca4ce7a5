"""`streamrec run exposure` (the exposure job) and `streamrec exposure check` (query a filter)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from infra import stack
from infra.config import Settings, load_settings
from infra.errors import StackError

exposure_app = typer.Typer(help="Query the exposure Bloom filters.")
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


def run_exposure(
    processes: ProcessesOpt = 1,
    recovery_dir: RecoveryOpt = None,
    snapshot_interval: SnapshotOpt = 10.0,
    until_end: UntilEndOpt = False,
    process_id: ProcessIdOpt = None,
    addresses: AddressesOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Per-user time-sliced Bloom filters of impressions, from interactions into Redis."""
    from bytewax.connectors.kafka import KafkaSink

    from streams.exposure import ExposureSink, build_flow
    from streams.kafka_io import KafkaBatchSource
    from streams.runner import RunConfig, launch_cluster, run_here

    if processes > 1 and process_id is None:
        argv = ["run", "exposure", "--snapshot-interval", str(snapshot_interval)]
        argv += ["--until-end"] if until_end else []
        argv += ["--recovery-dir", str(recovery_dir)] if recovery_dir is not None else []
        argv += ["--config", str(config)] if config is not None else []
        raise typer.Exit(launch_cluster(argv, processes))
    settings = load_settings(config)
    where = stack.endpoints(settings)
    topics = settings.kafka.topics
    flow = build_flow(
        KafkaBatchSource(where.bootstrap, topics.interactions, tail=not until_end),
        ExposureSink(where.redis_url, settings.exposure),
        KafkaSink([where.bootstrap], topics.dlq),
        settings.events.max_bytes,
    )
    run = RunConfig(
        processes=processes,
        process_id=process_id,
        addresses=tuple(addresses.split(";")) if addresses else (),
        recovery_dir=recovery_dir,
        snapshot_interval_s=snapshot_interval,
    )
    run_here(flow, run)


def _redis_url(settings: Settings) -> str:
    """The configured Redis, else the one `streamrec infra up` recorded (no broker needed)."""
    state = stack.read_state(settings)
    url = settings.redis.url or (state.redis_url if state else None)
    if url is None:
        raise StackError("no Redis is known: run `streamrec infra up` first, or set REDIS_URL")
    return url


def _time(ms: int | None) -> str:
    if ms is None:
        return "none yet"
    return f"{ms} ms ({datetime.fromtimestamp(ms / 1000, UTC):%Y-%m-%d %H:%M:%S} UTC)"


@exposure_app.command("check")
def exposure_check(
    user: Annotated[str, typer.Argument(help="The user_id.")],
    notes: Annotated[list[str], typer.Argument(help="Note ids to check.")],
    namespace: Annotated[
        str | None, typer.Option(help="Key namespace (default: exposure.namespace).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Print, for each note, whether USER was shown it within the retention window."""
    import redis

    from features.exposure import ExposureFilter
    from serving.errors import ServingError

    settings = load_settings(config)
    client = redis.Redis.from_url(_redis_url(settings))
    bloom = ExposureFilter(client, namespace or settings.exposure.namespace)
    try:
        seen = bloom.seen(user, notes)
        layout, hwm = bloom.describe()
    except ServingError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        client.close()
    table = Table(title=f"exposures of {user}")
    table.add_column("note")
    table.add_column("seen")
    for note, was in zip(notes, seen, strict=True):
        table.add_row(note, "[bold]yes[/bold]" if was else "no")
    console.print(table)
    console.print(
        f"retention {layout.retention_ms / 86_400_000:g} d in {layout.slices} slices of "
        f"{layout.slice_ms / 3_600_000:g} h; {layout.bits} bits x {layout.hashes} hashes per "
        f"slice; design fp {layout.design_fp:.2%} at {layout.expected_items:,} exposures"
    )
    console.print(f"job event-time high-water mark: {_time(hwm)}")
