"""`streamrec learn online | full`: the online learner and full training."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from infra.cli_options import (
    ConfigOpt,
    UntilEndOpt,
    console,
    progress_bar,
    services,
    settings_from,
)
from infra.config import Settings
from learners.errors import LearnersError
from streams.config import Broker

learn_app = typer.Typer(help="Train the ranker and the retriever; publish snapshots.")

REPORT_EVERY_S = 30.0
LEARNER_FLOW = "learn-online"
"""The `flow` label of the online learner's metrics."""
MetricsPortOpt = Annotated[
    int,
    typer.Option(
        min=0,
        max=65_535,
        help="Serve Prometheus metrics at http://<metrics.host>:PORT/metrics; 0: none.",
    ),
]


def _learner_collector(learner, bootstrap: Broker, topic: str):
    """A collector of the online learner's progress, read at scrape time (nothing is counted on
    the training path): samples, steps, bad messages, publications, and per partition of
    `topic` its position, the log end offset and the lag.

    The log end is the high watermark of a fetch at the learner's position (one small fetch per
    partition and scrape, at most 1 s): Tansu answers ListOffsets with the base offset of the
    last record batch plus one, not the log end (measured: 4 records in one batch -> 1), while
    its fetch responses carry the right watermark.
    """
    from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector

    from streams.kafka_io import make_consumer, partitions_of

    watcher = make_consumer(bootstrap, **{"max.partition.fetch.bytes": 65_536})
    parts = partitions_of(bootstrap, topic)

    def log_ends(offsets: dict[int, int]) -> dict[int, int]:
        """partition -> high watermark of a fetch at the learner's position."""
        watcher.assign([TopicPartition(topic, p, offsets.get(p, OFFSET_BEGINNING)) for p in parts])
        heard: set[int] = set()
        deadline = time.monotonic() + 1.0
        while len(heard) < len(parts) and time.monotonic() < deadline:
            heard |= {m.partition() for m in watcher.consume(100, 0.1)}
        ends = {}
        for p in heard:
            try:
                _, high = watcher.get_watermark_offsets(TopicPartition(topic, p), cached=True)
            except KafkaException:
                continue
            if high >= 0:
                ends[p] = high
        return ends

    class LearnerCollector(Collector):
        def collect(self):
            r, flow = learner.report, LEARNER_FLOW
            for name, doc, v in (
                ("streamrec_learner_samples", "Samples trained on", r.samples),
                ("streamrec_learner_steps", "Training steps", r.batches),
                ("streamrec_learner_bad_messages", "Undecodable messages (to the DLQ)",
                 r.bad_messages),
            ):  # fmt: skip
                family = CounterMetricFamily(name, doc, labels=["flow"])
                family.add_metric([flow], v)
                yield family
            published = CounterMetricFamily(
                "streamrec_learner_published", "Snapshots published", labels=["flow", "kind"]
            )
            published.add_metric([flow, "delta"], r.deltas)
            published.add_metric([flow, "full"], r.fulls)
            yield published
            last = GaugeMetricFamily(
                "streamrec_learner_last_publish_timestamp_seconds",
                "Unix time of the last snapshot this learner published",
                labels=["flow"],
            )
            if r.published:
                last.add_metric([flow], max(m.created_at_ms for m in r.published) / 1000)
            yield last
            auc = GaugeMetricFamily(
                "streamrec_learner_auc",
                "ROC AUC of the ranker per task over its newest predictions made before learning "
                "from them (learn.auc_window samples)",
                labels=["flow", "task"],
            )
            ring = learner.ranker.prequential
            for task, value in sorted((ring.auc() if ring is not None else {}).items()):
                auc.add_metric([flow, task], value)
            yield auc
            offsets = dict(learner.offsets)  # a copy is atomic; the learner runs meanwhile
            labels = ["flow", "topic", "partition"]
            position = GaugeMetricFamily(
                "streamrec_job_consumer_position", "Next offset the reader takes", labels=labels
            )
            end = GaugeMetricFamily(
                "streamrec_job_log_end_offset", "The partition's log end offset", labels=labels
            )
            lag = GaugeMetricFamily(
                "streamrec_job_consumer_lag", "Log end offset minus position", labels=labels
            )
            for p, high in sorted(log_ends(offsets).items()):
                where = [flow, topic, str(p)]
                at = offsets.get(p, 0)
                position.add_metric(where, at)
                end.add_metric(where, high)
                lag.add_metric(where, max(high - at, 0))
            yield from (position, end, lag)

        def describe(self):
            return iter(())

    return LearnerCollector(), watcher


def _serve_learner_metrics(settings: Settings, port: int, learner, bootstrap: Broker):
    """Serve the learner's metrics at `port` (None when 0); returns a function that stops it.

    Raises:
        ConfigError: the port cannot be bound.
    """
    if not port:
        return lambda: None
    from prometheus_client import CollectorRegistry

    from infra.jobs import serve_metrics

    collector, watcher = _learner_collector(
        learner, bootstrap, settings.kafka.topics.training_samples
    )
    registry = CollectorRegistry()  # the learner's own series only (no empty job series)
    registry.register(collector)
    server = serve_metrics(settings.metrics.host, port, registry)
    console.print(f"metrics at http://{settings.metrics.host}:{server.port}/metrics")

    def stop() -> None:
        server.shutdown()
        watcher.close()

    return stop


def _fail(exc: Exception) -> typer.Exit:
    """Print `exc` (e.g. an unwritable snapshot root: its directory and what to do) and exit 2."""
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(exc))}")
    return typer.Exit(2)


def _announcer(settings: Settings, bootstrap: Broker):
    from learners.subscription import kafka_announcer

    return kafka_announcer(
        bootstrap,
        settings.kafka.topics.embedding_snapshots,
        inline_max_bytes=settings.snapshots.inline_max_bytes,
    )


@learn_app.command("full")
def learn_full(
    log_dir: Annotated[
        Path | None, typer.Option(help="Parquet sample log (default: <data_dir>/training-samples).")
    ] = None,
    announce: Annotated[
        bool, typer.Option(help="Announce the versions on embedding-snapshots.")
    ] = True,
    config: ConfigOpt = None,
) -> None:
    """All parameters, warm start from the latest snapshot, one shuffled pass over the log."""
    from learners.full import run_full

    settings = settings_from(config)
    learn = settings.learn
    directory = log_dir or settings.samples.log_url or settings.paths.sample_log
    announcer = (
        _announcer(settings, settings.kafka.connect(services(settings, redis=False).bootstrap))
        if announce
        else None
    )
    progress = progress_bar()
    with progress:
        task = progress.add_task("full training", total=None)
        try:
            report = run_full(
                directory,
                learn,
                settings.snapshots,
                announcer,
                on_progress=lambda n: progress.advance(task, n),
                on_start=lambda n: progress.update(task, total=n),
                features=settings.features,
            )
        except LearnersError as exc:
            raise _fail(exc) from None
    console.print(
        f"{report.samples:,} samples in {report.seconds:.1f} s "
        f"({report.samples / max(report.seconds, 1e-9):,.0f}/s); warm start {report.warm_start}; "
        f"ranker loss {report.ranker_loss:.4f}, gate entropy {report.gate_entropy:.3f}"
    )
    for m in report.published:
        console.print(f"published {m.model} version {m.version} ({m.kind}) rows {m.rows}")


@learn_app.command("online")
def learn_online(
    until_end: UntilEndOpt = False, metrics_port: MetricsPortOpt = 0, config: ConfigOpt = None
) -> None:
    """ID embeddings only (dense frozen) from training-samples; deltas every delta_every_s."""
    settings = settings_from(config)
    where = services(settings, redis=False)  # before the slow imports: a stopped broker fails fast

    import torch

    from learners.online import FLOW, Message, OnlineLearner, kafka_messages
    from streams.events import DeadLetter, encode_dead_letter
    from streams.kafka_io import make_producer

    learn = settings.learn
    torch.set_num_threads(learn.threads)
    topics = settings.kafka.topics
    kafka = settings.kafka.connect(where.bootstrap)
    dlq = make_producer(kafka)

    def dead_letter(message: Message, reason: str) -> None:
        record = DeadLetter(
            reason="invalid_sample_batch",
            error=reason,
            original=message.value,
            at_ms=int(time.time() * 1000),
            flow=FLOW,
            source_topic=topics.training_samples,
            partition=message.partition,
            offset=message.offset,
        )
        dlq.produce(topics.dlq, value=encode_dead_letter(record))

    stop_metrics = lambda: None  # noqa: E731 - replaced once the learner exists
    try:
        learner = OnlineLearner.from_latest(
            learn,
            settings.snapshots,
            _announcer(settings, kafka),
            dead_letter,
            features=settings.features,
        )
        console.print(
            f"online learner from ranker {learner.bases['ranker']} / retriever "
            f"{learner.bases['retriever']}, offsets {learner.offsets or 'from the beginning'}"
        )
        stop_metrics = _serve_learner_metrics(settings, metrics_port, learner, kafka)
        messages = kafka_messages(
            kafka,
            topics.training_samples,
            learner.offsets,
            until_end,
            learn.poll_timeout_s,
        )
        last = time.monotonic()
        for message in messages:
            if message is not None:
                learner.add(message)
            else:
                learner.flush()
            for m in learner.tick():
                console.print(f"published {m.model} {m.version} ({m.kind}) rows {m.rows}")
            if time.monotonic() - last >= REPORT_EVERY_S:
                last = time.monotonic()
                r = learner.report
                console.print(f"{r.samples:,} samples, {r.samples_per_s:,.0f}/s in training steps")
        learner.flush()
        for m in learner.publish_delta() if until_end else []:
            console.print(f"published {m.model} {m.version} ({m.kind}) rows {m.rows}")
    except LearnersError as exc:
        raise _fail(exc) from None
    finally:
        stop_metrics()
        dlq.flush(10)
    r = learner.report
    console.print(
        f"{r.samples:,} samples in {r.batches:,} steps ({r.samples_per_s:,.0f} samples/s), "
        f"{r.bad_messages} bad messages, {r.deltas} deltas, {r.fulls} fulls"
    )
