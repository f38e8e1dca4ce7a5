"""The `streamrec` command line: one entry point, a subcommand group per job."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import TextColumn
from rich.table import Table

from features.redis_conn import redact
from features.windows import WINDOWS
from infra import stack
from infra.cli_errors import (
    DEBUG_ENV,
    EXIT_KAFKA,
    EXIT_REDIS,
    EXIT_USAGE,
    NoArgsIsHelpError,
    debugging,
    fail,
)
from infra.cli_experiments import experiments_app
from infra.cli_exposure import exposure_app
from infra.cli_learn import learn_app
from infra.cli_options import ConfigOpt, print_counts, progress_bar, services, settings_from
from infra.cli_run import run_app
from infra.cli_serve import serve
from infra.cli_snapshots import snapshots_app
from streams.config import Broker

app = typer.Typer(help="streamrec: streaming features and online learning.", no_args_is_help=True)
infra_app = typer.Typer(help="The local stack: Kafka-protocol broker and Redis.")
replay_app = typer.Typer(help="Replay a source into the interactions topic.")
topics_app = typer.Typer(help="Inspect topics.")
app.add_typer(infra_app, name="infra")
app.add_typer(replay_app, name="replay")
app.add_typer(run_app, name="run")
app.add_typer(topics_app, name="topics")
app.add_typer(snapshots_app, name="snapshots")
app.add_typer(learn_app, name="learn")
app.add_typer(exposure_app, name="exposure")
app.add_typer(experiments_app, name="experiments")
app.command("serve")(serve)

console = Console()
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@app.callback()
def _global_options(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help="On a failure, print the full traceback before the one-line error (and the "
            "Kafka clients' logs); also STREAMREC_DEBUG=1.",
        ),
    ] = False,
) -> None:
    """streamrec: streaming features and online learning."""
    if debug:
        os.environ[DEBUG_ENV] = "1"  # the processes a command starts inherit it
    if debugging():
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@infra_app.command("up")
def infra_up(
    redis_cluster: Annotated[
        bool,
        typer.Option(
            "--redis-cluster",
            help="Start a local Redis Cluster (stack.cluster_masters masters, default 3) instead "
            "of a single Redis when REDIS_URL is unset; its URL ends in ?cluster=true.",
        ),
    ] = False,
    config: ConfigOpt = None,
    monitoring: Annotated[
        bool,
        typer.Option(
            "--monitoring",
            help="Also start Prometheus (if installed) with the alerting rules, scraping the "
            "API and the jobs (docs/operations.md).",
        ),
    ] = False,
) -> None:
    """Start (or find) the broker and Redis and create the topics; idempotent."""
    settings = settings_from(config)
    # a configured service must answer (exit 3 / 4, like every command); others are started
    services(settings, kafka=bool(settings.kafka.bootstrap), redis=bool(settings.redis.url))
    state = stack.up(settings, monitoring=monitoring, redis_cluster=redis_cluster or None)
    console.print(f"kafka  {state.bootstrap}" + (" (started)" if state.kafka.pid else ""))
    started = state.redis.pid or state.redis_nodes
    console.print(f"redis  {redact(state.redis_url)}" + (" (started)" if started else ""))
    for node in state.redis_nodes:
        console.print(f"       cluster node {node.address} (pid {node.pid})")
    console.print(f"topics {', '.join(state.topics)}")
    if state.prometheus is not None:
        console.print(
            f"prometheus http://{state.prometheus.address} (rules {stack.RULES}; config "
            f"{settings.paths.stack / 'prometheus' / 'prometheus.yml'})"
        )


@infra_app.command("status")
def infra_status(config: ConfigOpt = None) -> None:
    """Ask each service (Kafka: a metadata request, Redis: PING) and print up or down.

    The addresses are those every other command uses: the settings (KAFKA_BOOTSTRAP, REDIS_URL)
    first, else what `streamrec infra up` recorded. Exits 0 when all answer, 3 when the broker
    does not, 4 when only Redis does not.
    """
    report = stack.status(settings_from(config))
    for service in report:
        state = f"up ({service.latency_ms:,.0f} ms)" if service.up else f"DOWN: {service.detail}"
        console.print(
            f"{service.name:6} {redact(service.address)}  {state}  ({service.origin})",
            soft_wrap=True,
        )
    down = {s.name for s in report if not s.up}
    if "kafka" in down:
        raise typer.Exit(EXIT_KAFKA)
    if "redis" in down:
        raise typer.Exit(EXIT_REDIS)


@infra_app.command("down")
def infra_down(config: ConfigOpt = None) -> None:
    """Stop what `infra up` started (services it only found keep running)."""
    stopped = stack.down(settings_from(config))
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing'}")


def _replay(source, settings, bootstrap: Broker, rate: float | None, topic: str | None) -> None:
    from streams.replay import replay

    topic = topic or settings.kafka.topics.interactions
    total = source.estimated_total()
    with progress_bar(TextColumn("{task.fields[rate]}")) as progress:
        task = progress.add_task(f"replay {source.name}", total=total, rate="")

        def advance(n: int) -> None:
            progress.advance(task, n)

        report = replay(source, bootstrap, topic, rate=rate, on_progress=advance)
        progress.update(task, total=report.events, rate=f"{report.rate:,.0f} ev/s")
    print_counts(f"replayed to {topic}", report.by_type)
    console.print(f"{report.events:,} events in {report.seconds:.2f} s ({report.rate:,.0f}/s)")


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
    settings = settings_from(config)
    bootstrap = settings.kafka.connect(services(settings, redis=False).bootstrap)
    truth = truth_dir or settings.data_dir / "truth" / f"synthetic-{seed}"
    source.write_truth(truth)
    console.print(f"ground truth: {truth}")
    _replay(source, settings, bootstrap, rate, topic)


FILE_SOURCES = {
    "movielens": (
        "streams.sources.movielens:MovieLensSource",
        DATA / "movielens-100k" / "u.data",
        "u.data file.",
        "Replay MovieLens ratings (impression + click, rating >= 4 also like).",
    ),
    "kuairand": (
        "streams.sources.kuairand:KuaiRandSource",
        DATA / "kuairand-27k-likehate" / "processed_standard_kcore_15.tsv",
        "KuaiRand log (CSV/TSV).",
        "Replay a KuaiRand log, re-sorted by time (mapping in docs/sources.md).",
    ),
}
"""`streamrec replay <name>` commands of the file sources: (class, default file, help, summary)."""


def _file_replay(where: str, default: Path, path_help: str, summary: str):
    def command(
        path: Path = default,
        limit: LimitOpt = None,
        rate: RateOpt = None,
        topic: TopicOpt = None,
        config: ConfigOpt = None,
    ) -> None:
        import importlib

        settings = settings_from(config)
        bootstrap = settings.kafka.connect(services(settings, redis=False).bootstrap)
        module, _, name = where.partition(":")
        source = getattr(importlib.import_module(module), name)(path, limit=limit)
        _replay(source, settings, bootstrap, rate, topic)

    command.__doc__ = summary
    # Annotations are strings here (PEP 563): the argument's help is set as an object instead.
    command.__annotations__["path"] = Annotated[Path, typer.Argument(help=path_help)]
    return command


for _name, _spec in FILE_SOURCES.items():
    replay_app.command(_name)(_file_replay(*_spec))


@topics_app.command("summary")
def topics_summary(topic: TopicOpt = None, config: ConfigOpt = None) -> None:
    """Count the events in a topic by type, and the dead letters by reason."""
    from streams.summary import summarize_dead_letters, summarize_events

    settings = settings_from(config)
    where = services(settings, redis=False)
    topic = topic or settings.kafka.topics.interactions
    summary = summarize_events(settings.kafka.connect(where.bootstrap), topic)
    print_counts(f"{topic}: events by type", summary.by_type)
    if summary.invalid:
        print_counts(f"{topic}: invalid messages by reason", summary.invalid)
    dead = summarize_dead_letters(
        settings.kafka.connect(where.bootstrap), settings.kafka.topics.dlq
    )
    print_counts(
        f"{settings.kafka.topics.dlq}: dead letters by reason",
        Counter({f"{r} ({f})" if f else r: n for (r, f), n in dead.items()}),
    )


features_app = typer.Typer(help="Read the feature store.")
app.add_typer(features_app, name="features")
WINDOW_NAMES = tuple(w.name for w in WINDOWS)


@features_app.command("get")
def features_get(
    entity: Annotated[str, typer.Argument(help="user or note")],
    entity_id: Annotated[str, typer.Argument(help="The user_id or note_id.")],
    config: ConfigOpt = None,
) -> None:
    """Print the live window statistics of a user or note (what get_online_features returns)."""
    if entity not in ("user", "note"):
        raise typer.BadParameter(f"entity must be 'user' or 'note', not {entity!r}")
    settings = settings_from(config)
    redis_url = services(settings, kafka=False).redis_url
    from features.client import VIEW_OF, FeatureClient  # Feast: slow to import

    client = FeatureClient.from_url(redis_url, settings.feast_project)
    try:
        values = client.get(entity, [entity_id])
        stored = client.stored_at(entity, [entity_id])[0]
        hwm = client.as_of("stats")
    finally:
        client.close()
    table = Table(title=f"{VIEW_OF[entity]} {entity_id}")
    table.add_column("feature")
    for w in WINDOW_NAMES:
        table.add_column(w, justify="right")
    names = dict.fromkeys(k.rsplit("_", 1)[0] for k in list(values)[1:])
    for name in names:
        cells = [values.get(f"{name}_{w}", [None])[0] for w in WINDOW_NAMES]
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
    console.print(f"job event-time high-water mark: {hwm if hwm is not None else 'none yet'} ms")


@features_app.command("rebuild")
def features_rebuild(
    source: Annotated[
        str, typer.Option("--from", help="kafka (re-run the stats job) or offline (the log).")
    ] = "kafka",
    config: ConfigOpt = None,
) -> None:
    """Restore the online store after Redis lost its data (restarted empty, flushed).

    `--from kafka` runs the stats job bounded over the whole `interactions` topic with fresh
    state (no recovery store) - exact as of the topic's end, if the topic still holds the longest
    window (30 days); `--from offline` materializes the offline log into Redis through Feast.
    """
    settings = settings_from(config)
    if source == "kafka":
        from infra.jobs import JOBS, run_job
        from streams.runner import RunConfig

        services(settings)
        run_job(JOBS["stats"], settings, RunConfig(), until_end=True)
    elif source == "offline":
        from datetime import UTC, datetime

        from features.store import feature_store

        store = feature_store(
            services(settings, kafka=False).redis_url, settings.feast_project, settings.data_dir
        )
        store.materialize(datetime(1970, 1, 1, tzinfo=UTC), datetime.now(UTC))
    else:
        raise typer.BadParameter(f"--from must be 'kafka' or 'offline', not {source!r}")
    console.print(f"online store of project {settings.feast_project} rebuilt from {source}")


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
        settings_from(config),
        DemoConfig(live_s=live_s, warm_s=warm_s, event_rate=event_rate),
        console,
    )
    print_report(report, console)


def main() -> None:
    """Entry point: run the app; a failure is one line on stderr and an exit code per class of
    failure (`infra.cli_errors`; with `--debug` the traceback first)."""
    try:
        code = app(standalone_mode=False)
    except Exception as exc:
        if NoArgsIsHelpError is not None and isinstance(exc, NoArgsIsHelpError):
            # typer has printed the help already (with rich); plain click leaves it here
            if exc.format_message().strip():
                print(exc.format_message())
            raise SystemExit(EXIT_USAGE) from None
        raise SystemExit(fail(exc)) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
