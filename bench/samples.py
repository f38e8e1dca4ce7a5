"""Sample joiner throughput: Kafka `interactions` -> the joiner flow -> `training-samples` + log.

Replays synthetic events into a fresh topic, then runs, in the same process and interleaved,
the bare read-and-decode flow (`bench.common.bare_read_decode_rate`, the peer) and the joiner
(`streams.samples.build_flow` with `KafkaBatchSource`, `KafkaSink`, `SampleLogSink`), several
times each; prints medians and the ratio, and the joiner's CPU time (this process's, all threads:
steadier than its wall time on a loaded machine).

    .venv/bin/python -m bench.samples [--events 200000] [--repeats 3] [--keep-rate 0.25]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

from bytewax.connectors.kafka import KafkaSink
from bytewax.testing import run_main
from rich.console import Console
from rich.progress import Progress

from bench.common import bare_read_decode_rate, bench_stack, fresh_topic, median
from features.samples import read_sample_log
from infra.stack import ensure_topics
from streams.config import SamplesConfig
from streams.kafka_io import KafkaBatchSource, partitions_of
from streams.replay import replay
from streams.samples import SampleLogSink, build_flow
from streams.sinks import CallbackSink
from streams.sources.synthetic import SyntheticConfig, SyntheticSource

console = Console()


def joiner_run(
    bootstrap: str, topic: str, config: SamplesConfig
) -> tuple[float, float, Counter, int]:
    """Run the joiner over `topic` once; return (wall s, CPU s, report totals, rows in the log)."""
    counts: Counter = Counter()
    out_topic = fresh_topic(bootstrap, "bench-samples-out")
    with tempfile.TemporaryDirectory() as tmp:
        flow = build_flow(
            KafkaBatchSource(bootstrap, topic, tail=False),
            KafkaSink([bootstrap], out_topic),
            SampleLogSink(Path(tmp), config.log_rows_per_part),
            KafkaSink([bootstrap], f"{topic}.dlq"),
            CallbackSink(lambda r: counts.update(r.counts)),
            config,
            partitions_of(bootstrap, topic),
            recoverable=False,
        )
        start, cpu = time.perf_counter(), time.process_time()
        run_main(flow)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        rows = read_sample_log(Path(tmp)).num_rows
    return elapsed, cpu, counts, rows


def main() -> None:
    """Measure and print the joiner's rates next to the bare read rate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep-rate", type=float, default=0.25)
    args = parser.parse_args()
    # One request per second of event time: 200k events span ~6 h, so windows close mid-run.
    world = SyntheticConfig(seed=21, request_gap_ms=1_000.0)
    config = SamplesConfig(negative_keep_rate=args.keep_rate)
    bare: list[float] = []
    joiner: list[float] = []
    cpu: list[float] = []
    with bench_stack() as state:
        topic = fresh_topic(state.bootstrap, "bench-samples")
        ensure_topics(state.bootstrap, [f"{topic}.dlq"], 1)
        replay(SyntheticSource(world, limit=args.events), state.bootstrap, topic)
        with Progress(console=console) as progress:
            task = progress.add_task("bare read vs joiner", total=args.repeats)
            for _ in range(args.repeats):
                bare.append(bare_read_decode_rate(state.bootstrap, topic, args.events))
                seconds, used, counts, rows = joiner_run(state.bootstrap, topic, config)
                joiner.append(seconds)
                cpu.append(used)
                progress.advance(task)
    closed = counts["samples"]
    kept = counts["kept_positive"] + counts["kept_negative"]
    wall, bare_rate = median(joiner), median(bare)
    console.print(
        f"events {args.events:,}: impressions {counts['impressions']:,}, samples closed "
        f"{closed:,}, kept {kept:,} (log rows {rows:,}), a = {args.keep_rate}"
    )
    console.print(f"bare read+decode: {bare_rate:,.0f} events/s (median of {args.repeats})")
    console.print(
        f"joiner: {wall:.2f} s wall (median), {args.events / wall:,.0f} events/s, "
        f"{closed / wall:,.0f} samples closed/s, {kept / wall:,.0f} samples written/s; "
        f"CPU {median(cpu):.2f} s (median; runs {', '.join(f'{c:.2f}' for c in cpu)})"
    )
    console.print(f"joiner / bare (events/s): {args.events / wall / bare_rate:.2f}")


if __name__ == "__main__":
    main()
