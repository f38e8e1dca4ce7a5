"""The streaming jobs, one registry of specs, and the one skeleton that deploys each of them.

A `JobSpec` says how to build a job's dataflow from the settings and the endpoints (its I/O:
Kafka source, sinks, DLQ); `run_job` does the rest the same way for every job: endpoints ->
build -> `RunConfig` -> run here, or launch a cluster of processes that each run their share.
`streamrec run <job>` is generated from `JOBS` (infra/cli_run.py). With a metrics port, each
process serves its Prometheus metrics (`streams.metrics`) while it runs, process i at port + i;
the sources commit their offsets to the consumer group `streamrec-<job>` at every snapshot.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.inputs import StatefulSourcePartition
from bytewax.outputs import StatelessSinkPartition
from rich.table import Table

from infra import stack
from infra.cli_options import console, print_counts
from infra.config import Settings
from infra.errors import ConfigError
from infra.processes import ProcessGroup, free_port
from streams.config import KafkaConnection
from streams.errors import StreamsError
from streams.runner import RunConfig, run_here

REPORT_EVERY_S = 30.0


@dataclass
class Tally:
    """What this process of a job read and dead-lettered: its final summary line."""

    events: int = 0
    """Messages read from the input topic (valid or not)."""
    dead: Counter = field(default_factory=Counter)
    """Dead letters written, by reason."""

    def line(self, job: str, where: str, seconds: float) -> str:
        """`<job> (<where>): done in S s: N events read, D dead letters (reason n, ...)`."""
        reasons = ", ".join(f"{r} {n:,}" for r, n in self.dead.most_common())
        dead = sum(self.dead.values())
        return (
            f"{job} ({where}): done in {seconds:,.1f} s: {self.events:,} events read, "
            f"{dead:,} dead letters{f' ({reasons})' if reasons else ''}"
        )


@dataclass(frozen=True)
class JobContext:
    """What a job's builder gets: settings, where the services are, and how it runs."""

    settings: Settings
    where: stack.StackState
    until_end: bool
    recoverable: bool
    process_id: int | None
    reset_hint: str = "streamrec run <job> --reset earliest"
    """The command that starts the job over, named when its recovery offsets do not belong to
    the topic it reads (`streams.errors.LogMismatchError`)."""
    tally: Tally = field(default_factory=Tally)
    """Counts of what the job's source read and its DLQ sink wrote (the final summary)."""
    job: str | None = None
    """The job's name: the `flow` label of its metrics, its consumer group `streamrec-<job>`
    (None: metrics labelled `unnamed`, no offsets committed)."""

    @property
    def flow(self) -> str:
        """The `flow` label of the job's metrics."""
        return self.job or "unnamed"

    @property
    def kafka(self) -> KafkaConnection:
        """The broker with the settings' security (what every Kafka client of the job gets)."""
        return self.settings.kafka.connect(self.where.bootstrap)

    def sink_config(self) -> dict[str, str]:
        """`add_config` of Bytewax's `KafkaSink`: the durable producer settings and security."""
        from streams.kafka_io import SINK_CONFIG

        return {**SINK_CONFIG, **self.settings.kafka.security.librdkafka()}


@dataclass
class BuiltJob:
    """A job's dataflow, and what to print when it ends (if anything)."""

    flow: Dataflow
    report: Callable[[], None] | None = None


@dataclass(frozen=True)
class JobSpec:
    """One streaming job: its name, one-line summary and builder."""

    name: str
    summary: str
    build: Callable[[JobContext], BuiltJob]
    prepare: Callable[[JobContext], None] | None = field(default=None)
    """Runs once before the flow starts (in the first process of a cluster)."""


def _sink(ctx: JobContext, topic: str):
    """Bytewax's Kafka sink on `topic`, with the durable producer settings (acks=all,
    idempotence), metered as sink `topic`."""
    from bytewax.connectors.kafka import KafkaSink

    from streams.sinks import metered

    sink = KafkaSink([ctx.where.bootstrap], topic, add_config=ctx.sink_config())
    return metered(sink, ctx.flow, topic, "kafka")


def _dlq(ctx: JobContext):
    """The DLQ sink, counting dead letters by reason into `ctx.tally`."""
    import msgspec
    from bytewax.connectors.kafka import KafkaSink

    from streams.events import decode_dead_letter
    from streams.sinks import metered

    tally = ctx.tally

    class CountingPartition(StatelessSinkPartition):
        def __init__(self, inner) -> None:
            self.inner = inner

        def write_batch(self, items: list) -> None:
            self.inner.write_batch(items)
            for item in items:
                try:
                    tally.dead[decode_dead_letter(item.value).reason] += 1
                except msgspec.DecodeError:  # a count, never a failure
                    tally.dead["unknown"] += 1

        def close(self) -> None:
            self.inner.close()

    class CountingSink(KafkaSink):
        def build(self, step_id: str, worker_index: int, worker_count: int):
            return CountingPartition(super().build(step_id, worker_index, worker_count))

    topic = ctx.settings.kafka.topics.dlq
    sink = CountingSink([ctx.where.bootstrap], topic, add_config=ctx.sink_config())
    return metered(sink, ctx.flow, "dlq", "kafka")


def _source(ctx: JobContext):
    """The Kafka source of `interactions`, counting the messages it reads into `ctx.tally`."""
    from streams.kafka_io import KafkaBatchSource

    tally = ctx.tally

    class CountingPartition(StatefulSourcePartition):
        def __init__(self, inner) -> None:
            self.inner = inner

        def next_batch(self) -> list:
            batch = self.inner.next_batch()
            tally.events += sum(len(b.values) for b in batch)
            return batch

        def next_awake(self):
            return self.inner.next_awake()

        def snapshot(self):
            return self.inner.snapshot()

        def close(self) -> None:
            self.inner.close()

    class CountingSource(KafkaBatchSource):
        def build_part(self, step_id: str, for_part: str, resume_state):
            return CountingPartition(super().build_part(step_id, for_part, resume_state))

    return CountingSource(
        ctx.kafka,
        ctx.settings.kafka.topics.interactions,
        tail=not ctx.until_end,
        reset_hint=ctx.reset_hint,
        job=ctx.job,
    )


def _build_validate(ctx: JobContext) -> BuiltJob:
    from streams.sinks import CallbackSink
    from streams.validate import build_flow

    totals: Counter = Counter()
    flow = build_flow(
        _source(ctx),
        CallbackSink(lambda item: totals.update(item[1])),
        _dlq(ctx),
        ctx.settings.events,
    )
    return BuiltJob(flow, lambda: print_counts("valid events by type", totals))


def _apply_features(ctx: JobContext) -> None:
    from features.store import apply_definitions, feature_store

    s = ctx.settings
    apply_definitions(feature_store(ctx.where.redis_url, s.feast_project, s.data_dir), s.data_dir)


def _build_stats(ctx: JobContext) -> BuiltJob:
    from features.client import StoreGeneration
    from features.redis_conn import connect
    from streams.online_sink import FeastOnlineSink
    from streams.stats import build_flow

    s = ctx.settings
    store = connect(ctx.where.redis_url, socket_timeout=2, socket_connect_timeout=2)
    flow = build_flow(
        _source(ctx),
        FeastOnlineSink(
            ctx.where.redis_url,
            s.feast_project,
            s.stats.shards,
            s.features,
            offline=s.paths.offline(s.feast_project),
            flow=ctx.flow,
            durable=ctx.recoverable,
        ),
        _dlq(ctx),
        s.stats,
        recoverable=ctx.recoverable,
        limits=s.events,
        generation=StoreGeneration(store, s.feast_project).current,
    )
    return BuiltJob(flow)


def _build_exposure(ctx: JobContext) -> BuiltJob:
    from streams.exposure import ExposureSink, build_flow
    from streams.sinks import metered

    s = ctx.settings
    bloom = metered(ExposureSink(ctx.where.redis_url, s.exposure), ctx.flow, "bloom", "redis")
    flow = build_flow(_source(ctx), bloom, _dlq(ctx), s.events)
    return BuiltJob(flow)


def _build_experiments(ctx: JobContext) -> BuiltJob:
    from streams.experiments import ExperimentLogSink, build_flow
    from streams.sinks import metered

    s = ctx.settings
    log = metered(ExperimentLogSink(s.paths.experiment_log), ctx.flow, "experiment-log", "parquet")
    flow = build_flow(
        _source(ctx), log, _dlq(ctx), s.experiments, s.events, recoverable=ctx.recoverable
    )
    return BuiltJob(flow, lambda: say(f"experiment log: {s.paths.experiment_log}"))


class _JoinTotals:
    """Sums the joiner's reports; prints them every `REPORT_EVERY_S` and at the end."""

    def __init__(self, where: str, log_dir: Path | str) -> None:
        self.counts: Counter = Counter()
        self.where, self.log_dir = where, log_dir
        self._last = time.monotonic()

    def add(self, report: object) -> None:
        self.counts.update(report.counts)
        if time.monotonic() - self._last >= REPORT_EVERY_S:
            self._last = time.monotonic()
            console.print(f"{self.where}: " + ", ".join(f"{k} {v:,}" for k, v in self.items()))

    def items(self) -> list[tuple[str, int]]:
        from streams.samples import REASONS

        return [(k, self.counts[k]) for k in REASONS if self.counts[k]]

    def print(self) -> None:
        table = Table(title=f"sample joiner ({self.where})")
        table.add_column("count")
        table.add_column("value", justify="right")
        for k, v in self.items():
            table.add_row(k, f"{v:,}")
        console.print(table)
        console.print(f"parquet log: {self.log_dir}")


def _build_samples(ctx: JobContext) -> BuiltJob:
    from streams.kafka_io import partitions_of
    from streams.samples import HistorySink, SampleLogSink, build_flow
    from streams.sinks import CallbackSink, metered

    s, topics = ctx.settings, ctx.settings.kafka.topics
    cfg = s.samples
    log_dir = cfg.log_url or s.paths.sample_log
    totals = _JoinTotals(
        "all partitions" if ctx.process_id is None else f"process {ctx.process_id}", log_dir
    )
    log = SampleLogSink(log_dir, cfg.log_rows_per_part, cfg.log_part_interval_s)
    history = None
    if cfg.history_len:
        history = HistorySink(ctx.where.redis_url, s.feast_project)
        history = metered(history, ctx.flow, "history", "redis")
    flow = build_flow(
        _source(ctx),
        _sink(ctx, topics.training_samples),
        metered(log, ctx.flow, "sample-log", "parquet"),
        _dlq(ctx),
        CallbackSink(totals.add),
        cfg,
        partitions_of(ctx.kafka, topics.interactions),
        recoverable=ctx.recoverable,
        limits=s.events,
        history=history,
    )
    return BuiltJob(flow, totals.print)


def _build_itemcf(ctx: JobContext) -> BuiltJob:
    from streams.itemcf import NeighbourSink, build_flow
    from streams.sinks import metered

    s = ctx.settings
    sink = NeighbourSink(ctx.where.redis_url, s.feast_project, s.coclick.per_author)
    flow = build_flow(
        _source(ctx),
        metered(sink, ctx.flow, "neighbours", "redis"),
        _dlq(ctx),
        s.coclick,
        limits=s.events,
        recoverable=ctx.recoverable,
    )
    return BuiltJob(flow)


JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec(
            "validate",
            "Audit interactions: invalid events to the DLQ with their reason, valid ones counted.",
            _build_validate,
        ),
        JobSpec(
            "stats",
            "Multi-window user and note statistics from interactions into Feast (Redis).",
            _build_stats,
            prepare=_apply_features,
        ),
        JobSpec(
            "exposure",
            "Per-user exposure Bloom filters from the impressions in interactions (Redis).",
            _build_exposure,
        ),
        JobSpec(
            "samples",
            "Labelled samples: impressions joined with their actions, to training-samples + "
            "parquet; users' click histories into Feast (Redis).",
            _build_samples,
            prepare=_apply_features,
        ),
        JobSpec(
            "itemcf",
            "ItemCF and Swing neighbours of every note from the clicks, author and fresh-note "
            "indexes, for the retrieval channels (Redis).",
            _build_itemcf,
        ),
        JobSpec(
            "experiments",
            "Per experiment x arm x day x user counts (impressions, clicks, likes, watch time, "
            "completions) from interactions into the experiment log (parquet).",
            _build_experiments,
        ),
    )
}
"""Every streaming job, by name."""


def cluster_argv(
    job: str,
    until_end: bool,
    recovery_dir: Path | None,
    snapshot_interval_s: float,
    config: Path | None,
    metrics_port: int | None = None,
) -> list[str]:
    """The `streamrec run <job>` arguments every process of a cluster gets (before its id)."""
    argv = ["run", job, "--snapshot-interval", str(snapshot_interval_s)]
    argv += ["--until-end"] if until_end else []
    argv += ["--metrics-port", str(metrics_port)] if metrics_port is not None else []
    argv += ["--recovery-dir", str(recovery_dir)] if recovery_dir is not None else []
    argv += ["--config", str(config)] if config is not None else []
    return argv


def launch_cluster(argv: list[str], processes: int) -> int:
    """Start `processes` copies of `streamrec <argv>` as one Bytewax cluster and wait for them.

    Each copy gets `--process-id I --addresses A` appended; their output is this process's.

    Returns:
        0 if every process exited 0, else the first non-zero exit code.
    """
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
    group = ProcessGroup(new_session=False)  # a signal to our group reaches them all
    for i in range(processes):
        group.start(
            f"process-{i}",
            [
                sys.executable,
                "-m",
                "infra.cli",
                *argv,
                "--process-id",
                str(i),
                "--addresses",
                addresses,
            ],
        )
    return group.wait()


RESETS = ("earliest",)
"""What `streamrec run <job> --reset` can start over from."""


def reset_recovery(recovery_dir: Path) -> Path | None:
    """Discard a job's recovery store (its state and the Kafka offsets kept with it), so the job
    starts over from the beginning of the topic; the store is moved aside, never deleted.

    Returns:
        Where the old store now is (`<dir>.discarded-<UTC time>`), or None if there was none.
    """
    if not any(recovery_dir.glob("part-*.sqlite3")):
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    aside = recovery_dir.with_name(f"{recovery_dir.name}.discarded-{stamp}")
    os.replace(recovery_dir, aside)
    return aside


def _streams_error(exc: BaseException) -> StreamsError | None:
    """The `StreamsError` behind an exception Bytewax wrapped (it re-raises a worker's error as
    its own, the original as cause or context), or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, StreamsError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def metrics_port(base: int, process_id: int | None) -> int:
    """The metrics port of a job process: `base` for a job of one process, `base + i` for
    process i of a cluster; 0 (no endpoint) when `base` is 0."""
    return base + (process_id or 0) if base else 0


def serve_metrics(host: str, port: int, registry=None):
    """Start this process's metrics endpoint (`streams.metrics.serve`) for `registry` (default:
    the jobs' registry).

    Raises:
        ConfigError: the port cannot be bound (in use by another job or process).
    """
    from streams import metrics

    try:
        return metrics.serve(port, host, registry or metrics.REGISTRY)
    except OSError as exc:
        raise ConfigError(
            f"cannot serve the job's metrics at {host}:{port}: {exc.strerror or exc}; choose "
            "another --metrics-port (or `metrics.port` in the settings; each process of a job "
            "of --processes N takes port + its index)"
        ) from exc


def run_job(
    spec: JobSpec,
    settings: Settings,
    run: RunConfig,
    until_end: bool,
    reset_hint: str | None = None,
    metrics_base: int | None = None,
) -> None:
    """Deploy `spec` in this process (alone, or as process `run.process_id` of a cluster).

    Args:
        metrics_base: base port of the metrics endpoints (`--metrics-port`); None: the
            settings' `metrics.port`; 0: none.

    Raises:
        StreamsError: the flow failed with one (unwrapped from Bytewax's own exception), e.g.
            `LogMismatchError` when the recovery offsets do not belong to the topic.
        ConfigError: the metrics port cannot be bound.
    """
    ctx = JobContext(
        settings=settings,
        where=stack.endpoints(settings),
        until_end=until_end,
        recoverable=run.recovery_dir is not None,
        process_id=run.process_id,
        reset_hint=reset_hint or f"streamrec run {spec.name} --reset earliest",
        job=spec.name,
    )
    base = settings.metrics.port if metrics_base is None else metrics_base
    port = metrics_port(base, run.process_id)
    server = serve_metrics(settings.metrics.host, port) if port else None
    try:
        if spec.prepare is not None and not run.process_id:
            spec.prepare(ctx)
        built = spec.build(ctx)
        where = (
            "1 process" if run.process_id is None else f"process {run.process_id}/{run.processes}"
        )
        served = f"; metrics at http://{settings.metrics.host}:{port}/metrics" if server else ""
        say(start_line(spec.name, where, ctx, run) + served)
        started = time.monotonic()
        try:
            run_here(built.flow, run)
        except Exception as exc:
            cause = _streams_error(exc)
            if cause is None or cause is exc:
                raise
            raise cause.with_traceback(None) from None
    finally:
        if server is not None:
            server.shutdown()
    if built.report is not None:
        built.report()
    say(ctx.tally.line(spec.name, where, time.monotonic() - started))


def say(line: str) -> None:
    """One line on stdout, never wrapped (log files and journald keep it whole)."""
    console.print(line, soft_wrap=True, markup=False, highlight=False)


def start_line(job: str, where: str, ctx: JobContext, run: RunConfig) -> str:
    """What a job says when it starts: topic, broker, bound, processes, recovery store, and the
    addresses of its cluster's processes (if it has several)."""
    s = ctx.settings
    bound = "until its end" if ctx.until_end else "unbounded (Ctrl-C stops it)"
    recovery = (
        f"recovery {run.recovery_dir} (snapshot every {run.snapshot_interval_s:g} s)"
        if run.recovery_dir is not None
        else "no recovery store"
    )
    cluster = f"; cluster {' '.join(run.addresses)}" if run.addresses else ""
    return (
        f"{job} ({where}): reading {s.kafka.topics.interactions} on {ctx.where.bootstrap} "
        f"{bound}; dead letters to {s.kafka.topics.dlq}; {recovery}{cluster}"
    )
