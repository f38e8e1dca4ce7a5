"""Replay throughput of the synthetic source vs a bare confluent-kafka producer loop.

Run: `.venv/bin/python -m bench.replay [--events N] [--reps R]`. Both sides produce the same
events to fresh topics on the same broker in the same run; the bare loop gets the bytes already
encoded (it does no generation and no encoding), so the ratio is what the replay's own work costs.
"""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.progress import track

from bench.common import bench_stack, fresh_topic, median, produce_all
from streams.kafka_io import make_producer
from streams.replay import encoded_batches, replay
from streams.sources.synthetic import SyntheticSource

console = Console()


def bare_producer(bootstrap: str, topic: str, keys: list[bytes], values: list[bytes]) -> float:
    """Produce pre-encoded messages in a plain loop; return messages/s."""
    producer = make_producer(bootstrap)
    start = time.perf_counter()
    produce_all(producer, topic, keys, values)
    rate = len(values) / (time.perf_counter() - start)
    producer.close()
    return rate


def main(events: int = 300_000, reps: int = 3) -> None:
    """Measure and print the figures."""
    with bench_stack() as state:
        keys: list[bytes] = []
        values: list[bytes] = []
        for k, v, *_ in encoded_batches(SyntheticSource(limit=events)):
            keys += k
            values += v
        replay_rates, bare_rates = [], []
        for _ in track(range(reps), description="replay vs bare producer", console=console):
            topic = fresh_topic(state.bootstrap, "bench-replay")
            report = replay(SyntheticSource(limit=events), state.bootstrap, topic)
            replay_rates.append(report.rate)
            topic = fresh_topic(state.bootstrap, "bench-bare")
            bare_rates.append(bare_producer(state.bootstrap, topic, keys, values))
        r, b = median(replay_rates), median(bare_rates)
        console.print(f"events per run             {events:,} (x{reps} reps, medians)")
        console.print(f"replay synthetic           {r:,.0f} events/s  (target >= 100,000)")
        console.print(f"bare confluent producer    {b:,.0f} events/s")
        paired = median([x / y for x, y in zip(replay_rates, bare_rates, strict=True)])
        console.print(f"ratio replay / bare        {r / b:.2f}  (target >= 0.5)")
        console.print(f"median of paired ratios    {paired:.2f}")
        console.print(
            f"runs: replay {[round(x) for x in replay_rates]}, "
            f"bare {[round(x) for x in bare_rates]}"
        )


if __name__ == "__main__":
    typer.run(main)
