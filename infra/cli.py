"""The `streamrec` command line: one entry point, a subcommand group per job."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra import stack
from infra.cli_exposure import exposure_app, run_exposure
from infra.cli_learn import learn_app
from infra.cli_samples import run_samples
from infra.cli_serve import serve
from infra.cli_snapshots import snapshots_app
from infra.config import Settings, load_settings
from infra.errors import InfraError
from streams.errors import StreamsError

app = typer.Typer(help="streamrec: streaming features and online learning.", no_args_is_help=True)
infra_app = typer.Typer(help="The local stack: Kafka-protocol broker and Redis.")
replay_app = typer.Typer(help="Replay a source into the interactions topic.")
run_app = typer.Typer(help="Deploy a streaming job.")
topics_app = typer.Typer(help="Inspect topics.")
app.add_typer(infra_app, name="infra")
app.add_typer(replay_app, name="replay")
app.add_typer(run_app, name="run")
app.add_typer(topics_app, name="topics")
app.add_typer(snapshots_app, name="snapshots")
app.add_typer(learn_app, name="learn")
app.add_typer(exposure_app, name="exposure")
run_app.command("exposure")(run_exposure)
run_app.command("samples")(run_samples)
app.command("serve")(serve)

console = Console()
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML settings file.")]
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _settings(config: Path | None) -> Settings:
    return load_settings(config)


@infra_app.command("up")
def infra_up(config: ConfigOpt = None) -> None:
    """Start (or find) the broker and Redis and create the topics; idempotent."""
    state = stack.up(_settings(config))
    console.print(f"kafka  {state.bootstrap}" + (" (started)" if state.kafka.pid else ""))
    console.print(f"redis  {state.redis_url}" + (" (started)" if state.redis.pid else ""))
    console.print(f"topics {', '.join(state.topics)}")


@infra_app.command("status")
def infra_status(config: ConfigOpt = None) -> None:
    """Show where the services run and whether they answer."""
    report = stack.status(_settings(config))
    if not report:
        console.print("no stack recorded here: run `streamrec infra up`")
        raise typer.Exit(1)
    for name, info in report.items():
        state = "answers" if info["answers"] else "DOES NOT ANSWER"
        origin = "started by infra up" if info["started"] else "found"
        console.print(f"{name:6} {info['address']}  {state}  ({origin})")


@infra_app.command("down")
def infra_down(config: ConfigOpt = None) -> None:
    """Stop what `infra up` started (services it only found keep running)."""
    stopped = stack.down(_settings(config))
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing'}")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


def _replay(source, config: Path | None, rate: float | None, topic: str | None) -> None:
    from streams.replay import replay

    settings = _settings(config)
    where = stack.endpoints(settings)
    topic = topic or settings.kafka.topics.interactions
    total = source.estimated_total()
    with _progress() as progress:
        task = progress.add_task(f"replay {source.name}", total=total, rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)

        report = replay(source, where.bootstrap, topic, rate=rate, on_progress=advance)
        progress.update(task, total=report.events, rate=f"{report.rate:,.0f} ev/s")
    _print_counts(f"replayed to {topic}", report.by_type)
    console.print(f"{report.events:,} events in {report.seconds:.2f} s ({report.rate:,.0f}/s)")


def _print_counts(title: str, counts: Counter) -> None:
    table = Table(title=title)
    table.add_column("type")
    table.add_column("events", justify="right")
    for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        table.add_row(str(kind), f"{n:,}")
    table.add_row("total", f"{sum(counts.values()):,}", style="bold")
    console.print(table)


LimitOpt = Annotated[int | None, typer.Option(help="Stop after this many events.")]
RateOpt = Annotated[float | None, typer.Option(help="Events per second (default: max).")]
TopicOpt = Annotated[str | None, typer.Option(help="Target topic (default: interactions).")]


@replay_app.command("synthetic")
def replay_synthetic(
    limit: Annotated[int, typer.Option(help="Events to produce.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    users: Annotated[int, typer.Option(help="Number of users.")] = 5_000,
    notes: Annotated[int, typer.Option(help="Number of notes.")] = 20_000,
    truth_dir: Annotated[Path | None, typer.Option(help="Where to write ground truth.")] = None,
    rate: RateOpt = None,
    topic: TopicOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Replay the seeded synthetic generator (writes its ground truth too)."""
    from streams.sources.synthetic import SyntheticConfig, SyntheticSource

    source = SyntheticSource(SyntheticConfig(seed=seed, users=users, notes=notes), limit=limit)
    settings = _settings(config)
    truth = truth_dir or Path(settings.stack.state_dir) / "truth" / f"synthetic-{seed}"
    source.write_truth(truth)
    console.print(f"ground truth: {truth}")
    _replay(source, config, rate, topic)


@replay_app.command("movielens")
def replay_movielens(
    path: Annotated[Path, typer.Argument(help="u.data file.")] = DATA / "movielens-100k" / "u.data",
    limit: LimitOpt = None,
    rate: RateOpt = None,
    topic: TopicOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Replay MovieLens ratings (impression + click, rating >= 4 also like)."""
    from streams.sources.movielens import MovieLensSource

    _replay(MovieLensSource(path, limit=limit), config, rate, topic)


@replay_app.command("kuairand")
def replay_kuairand(
    path: Annotated[Path, typer.Argument(help="KuaiRand log (CSV/TSV).")] = DATA
    / "kuairand-27k-likehate"
    / "processed_standard_kcore_15.tsv",
    limit: LimitOpt = None,
    rate: RateOpt = None,
    topic: TopicOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Replay a KuaiRand log, re-sorted by time (mapping in docs/sources.md)."""
    from streams.sources.kuairand import KuaiRandSource

    _replay(KuaiRandSource(path, limit=limit), config, rate, topic)


@topics_app.command("summary")
def topics_summary(topic: TopicOpt = None, config: ConfigOpt = None) -> None:
    """Count the events in a topic by type, and the dead letters by reason."""
    from streams.summary import summarize_dead_letters, summarize_events

    settings = _settings(config)
    where = stack.endpoints(settings)
    topic = topic or settings.kafka.topics.interactions
    summary = summarize_events(where.bootstrap, topic)
    _print_counts(f"{topic}: events by type", summary.by_type)
    if summary.invalid:
        _print_counts(f"{topic}: invalid messages by reason", summary.invalid)
    dead = summarize_dead_letters(where.bootstrap, settings.kafka.topics.dlq)
    _print_counts(
        f"{settings.kafka.topics.dlq}: dead letters by reason",
        Counter({f"{r} ({f})" if f else r: n for (r, f), n in dead.items()}),
    )


UntilEndOpt = Annotated[
    bool, typer.Option("--until-end", help="Bounded run: stop at the end of the topic.")
]


@run_app.command("validate")
def run_validate(until_end: UntilEndOpt = False, config: ConfigOpt = None) -> None:
    """Audit interactions: invalid events to the DLQ with their reason, valid ones counted."""
    from bytewax.connectors.kafka import KafkaSink
    from bytewax.testing import run_main

    from streams.kafka_io import KafkaBatchSource
    from streams.sinks import CallbackSink
    from streams.validate import build_flow

    settings = _settings(config)
    where = stack.endpoints(settings)
    topics = settings.kafka.topics
    totals: Counter = Counter()
    flow = build_flow(
        KafkaBatchSource(where.bootstrap, topics.interactions, tail=not until_end),
        CallbackSink(lambda item: totals.update(item[1])),
        KafkaSink([where.bootstrap], topics.dlq),
        settings.events.max_bytes,
    )
    run_main(flow)
    _print_counts("valid events by type", totals)


ProcessesOpt = Annotated[int, typer.Option(help="Processes (Kafka partitions split among them).")]
RecoveryOpt = Annotated[
    Path | None, typer.Option(help="Bytewax recovery store (resume after a crash).")
]
SnapshotOpt = Annotated[float, typer.Option(help="Seconds between state snapshots.")]
ProcessIdOpt = Annotated[int | None, typer.Option(hidden=True)]
AddressesOpt = Annotated[str | None, typer.Option(hidden=True)]


def _cluster_args(
    job: str, until_end: bool, recovery_dir: Path | None, snapshot: float, config: Path | None
) -> list[str]:
    argv = ["run", job, "--snapshot-interval", str(snapshot)]
    if until_end:
        argv.append("--until-end")
    if recovery_dir is not None:
        argv += ["--recovery-dir", str(recovery_dir)]
    if config is not None:
        argv += ["--config", str(config)]
    return argv


@run_app.command("stats")
def run_stats(
    processes: ProcessesOpt = 1,
    recovery_dir: RecoveryOpt = None,
    snapshot_interval: SnapshotOpt = 10.0,
    until_end: UntilEndOpt = False,
    process_id: ProcessIdOpt = None,
    addresses: AddressesOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Multi-window user and note statistics from interactions into Feast (Redis)."""
    from bytewax.connectors.kafka import KafkaSink

    from features.definitions import offline_dir
    from streams.kafka_io import KafkaBatchSource
    from streams.online_sink import FeastOnlineSink
    from streams.runner import RunConfig, launch_cluster, run_here
    from streams.stats import build_flow

    if processes > 1 and process_id is None:
        argv = _cluster_args("stats", until_end, recovery_dir, snapshot_interval, config)
        raise typer.Exit(launch_cluster(argv, processes))
    settings = _settings(config)
    where = stack.endpoints(settings)
    topics = settings.kafka.topics
    if not process_id:
        _apply_features(where.redis_url, settings)
    flow = build_flow(
        KafkaBatchSource(where.bootstrap, topics.interactions, tail=not until_end),
        FeastOnlineSink(
            where.redis_url,
            settings.feast_project,
            settings.stats.shards,
            offline_dir=offline_dir(settings.feast_project),
        ),
        KafkaSink([where.bootstrap], topics.dlq),
        settings.stats,
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


def _apply_features(redis_url: str, settings: Settings) -> None:
    from features.store import apply_definitions, feature_store

    apply_definitions(feature_store(redis_url, settings.feast_project))


features_app = typer.Typer(help="Read features through Feast.")
app.add_typer(features_app, name="features")


@features_app.command("get")
def features_get(
    entity: Annotated[str, typer.Argument(help="user or note")],
    entity_id: Annotated[str, typer.Argument(help="The user_id or note_id.")],
    config: ConfigOpt = None,
) -> None:
    """Print the live window statistics of a user or note (FeatureStore.get_online_features)."""
    from features.online_writer import OnlineWriter
    from features.store import feature_store, online_features
    from streams.online_sink import hwm_key

    views = {"user": "user_stats", "note": "note_stats"}
    if entity not in views:
        raise typer.BadParameter(f"entity must be 'user' or 'note', not {entity!r}")
    settings = _settings(config)
    where = stack.endpoints(settings)
    store = feature_store(where.redis_url, settings.feast_project)
    values = online_features(store, views[entity], [entity_id])
    import redis

    client = redis.Redis.from_url(where.redis_url)
    hwm = client.get(hwm_key(settings.feast_project, "stats"))
    stored = client.hget(
        OnlineWriter(client, settings.feast_project).redis_key(views[entity], entity_id),
        f"_ts:{views[entity]}",
    )
    table = Table(title=f"{views[entity]} {entity_id}")
    table.add_column("feature")
    for w in ("1h", "1d", "7d", "30d"):
        table.add_column(w, justify="right")
    names = sorted(
        {k.rsplit("_", 1)[0] for k in values if k != ("user_id", "note_id")[entity == "note"]},
        key=lambda n: list(values).index(f"{n}_1h") if f"{n}_1h" in values else 0,
    )
    for name in names:
        cells = [values.get(f"{name}_{w}", [None])[0] for w in ("1h", "1d", "7d", "30d")]
        table.add_row(
            name,
            *(
                "-" if c is None else f"{c:,.4g}" if isinstance(c, float) else f"{c:,}"
                for c in cells
            ),
        )
    console.print(table)
    if stored is None:
        console.print("no row stored for this id")
    console.print(f"job event-time high-water mark: {int(hwm) if hwm else 'none yet'} ms")


@app.command("demo")
def demo(
    live_s: Annotated[float, typer.Option(help="Seconds of the live phase.")] = 120.0,
    warm_s: Annotated[float, typer.Option(help="Seconds of event-time history.")] = 180.0,
    event_rate: Annotated[float, typer.Option(help="Events per second.")] = 1_500.0,
    config: ConfigOpt = None,
) -> None:
    """The whole loop on the local stack: jobs, training, serving, live events; measured."""
    from infra.demo import DemoConfig, print_report, run_demo

    report = run_demo(
        _settings(config), DemoConfig(live_s=live_s, warm_s=warm_s, event_rate=event_rate), console
    )
    print_report(report, console)


def main() -> None:
    """Entry point: run the app, turning known errors into one-line messages."""
    try:
        app()
    except (InfraError, StreamsError) as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
