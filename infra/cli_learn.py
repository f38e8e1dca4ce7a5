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

learn_app = typer.Typer(help="Train the ranker and the retriever; publish snapshots.")

REPORT_EVERY_S = 30.0


def _fail(exc: Exception) -> typer.Exit:
    """Print `exc` (e.g. an unwritable snapshot root: its directory and what to do) and exit 2."""
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(exc))}")
    return typer.Exit(2)


def _announcer(settings: Settings, bootstrap: str):
    from learners.snapshots import kafka_announcer

    return kafka_announcer(bootstrap, settings.kafka.topics.embedding_snapshots)


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
    directory = log_dir or settings.paths.sample_log
    announcer = (
        _announcer(settings, services(settings, redis=False).bootstrap) if announce else None
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
def learn_online(until_end: UntilEndOpt = False, config: ConfigOpt = None) -> None:
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
    dlq = make_producer(where.bootstrap)

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

    try:
        learner = OnlineLearner.from_latest(
            learn,
            settings.snapshots,
            _announcer(settings, where.bootstrap),
            dead_letter,
            features=settings.features,
        )
        console.print(
            f"online learner from ranker {learner.bases['ranker']} / retriever "
            f"{learner.bases['retriever']}, offsets {learner.offsets or 'from the beginning'}"
        )
        messages = kafka_messages(
            where.bootstrap,
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
        dlq.flush(10)
    r = learner.report
    console.print(
        f"{r.samples:,} samples in {r.batches:,} steps ({r.samples_per_s:,.0f} samples/s), "
        f"{r.bad_messages} bad messages, {r.deltas} deltas, {r.fulls} fulls"
    )
