"""Shared benchmark plumbing: the stack to run against, medians, fresh topic names."""

from __future__ import annotations

import contextlib
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from infra import stack
from infra.config import load_settings
from infra.processes import free_port, spawn, stop

if TYPE_CHECKING:
    from confluent_kafka import Producer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@contextmanager
def bench_stack() -> Iterator[stack.StackState]:
    """Use KAFKA_BOOTSTRAP/REDIS_URL if set, else a stack of its own that is stopped at the end.

    Without REDIS_URL the Redis is one of the bench's own (`own_redis`), not a Redis that
    happens to answer on 6379: the figures are then those of the tuning the project ships
    (`stack.REDIS_TUNING`), and two benches never flush each other's keys.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="streamrec-bench-"))
    env = _env()
    with contextlib.ExitStack() as resources:
        if "REDIS_URL" not in env:
            env["REDIS_URL"] = resources.enter_context(own_redis())
        settings = load_settings(env={**env, "STREAMREC_DATA_DIR": str(data_dir)})
        state = stack.up(settings)
        try:
            yield state
        finally:
            stack.down(settings)
            shutil.rmtree(data_dir, ignore_errors=True)


@contextmanager
def own_redis() -> Iterator[str]:
    """The URL of a `redis-server` of the bench's own, tuned as the one `infra` starts
    (`stack.REDIS_TUNING`), without persistence; stopped at the end."""
    directory = Path(tempfile.mkdtemp(prefix="streamrec-bench-redis-"))
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
    proc = spawn([*argv, *stack.REDIS_TUNING], directory / "redis.log")
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not stack.redis_answers(url):  # polling the condition: it answers
            if time.monotonic() > deadline:
                raise RuntimeError("the bench's redis-server did not start")
            time.sleep(0.05)
        yield url
    finally:
        stop([proc])
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def redis_pair(cluster: bool) -> Iterator[dict[str, str]]:
    """URLs of the Redis a bench compares: `single`, a `redis-server` of its own, and with
    `cluster` also `cluster`, a local 3-master Redis Cluster; both with `stack.REDIS_TUNING`, so
    they differ only by the clustering. Stopped at the end."""
    directory = Path(tempfile.mkdtemp(prefix="streamrec-bench-redis-"))
    cluster_ = None
    try:
        with own_redis() as single:
            urls = {"single": single}
            if cluster:
                cluster_ = stack.start_redis_cluster(directory / "cluster")
                urls["cluster"] = cluster_.url
            yield urls
    finally:
        if cluster_ is not None:
            cluster_.stop()
        shutil.rmtree(directory, ignore_errors=True)


def print_pair(figures: dict[str, dict[str, float]], title: str) -> None:
    """A table of each figure on `single` and `cluster` and their ratio cluster / single."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("figure", "single", "cluster", "cluster / single"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for name, one in figures["single"].items():
        many = figures["cluster"][name]
        ratio = f"{many / one:.2f}x" if one else "-"
        table.add_row(name, f"{one:,.2f}", f"{many:,.2f}", ratio)
    Console().print(table)


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("KAFKA_BOOTSTRAP", "REDIS_URL")}


def fresh_topic(bootstrap: str, prefix: str, partitions: int = 4) -> str:
    """Create and return a topic with a unique name."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    stack.ensure_topics(bootstrap, [name], partitions)
    return name


def produce_all(producer: Producer, topic: str, keys: list[bytes], values: list[bytes]) -> None:
    """Produce pre-encoded messages in a plain loop (waiting out a full queue), then flush."""
    for key, value in zip(keys, values, strict=True):
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def median(values: list[float]) -> float:
    """Median of the values."""
    return statistics.median(values)


def bare_read_decode_rate(bootstrap: str, topic: str, events: int) -> float:
    """Events/s of a bare Bytewax flow (its own KafkaSource) that reads and decodes `topic`."""
    import time

    import bytewax.operators as op
    from bytewax.connectors.kafka import KafkaSource
    from bytewax.dataflow import Dataflow
    from bytewax.testing import run_main

    from streams.events import decode_event
    from streams.sinks import CallbackSink

    seen = [0]

    def count(_: object) -> None:
        seen[0] += 1

    flow = Dataflow("bare")
    messages = op.input("in", flow, KafkaSource([bootstrap], [topic], tail=False))
    decoded = op.map("decode", messages, lambda m: decode_event(m.value))
    op.output("out", decoded, CallbackSink(count))
    start = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - start
    assert seen[0] == events, f"bare flow read {seen[0]} of {events} events"
    return events / elapsed


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) of the values."""
    import numpy as np

    return float(np.percentile(np.asarray(values), q))
