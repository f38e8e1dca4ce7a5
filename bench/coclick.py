"""Co-click (ItemCF + Swing) job throughput: Kafka `interactions` -> the flow -> Redis lists.

Replays a real log (MovieLens-100K, the KuaiRand subset) into a fresh topic, then runs, in the
same process and interleaved, the bare read-and-decode flow (`bench.common.bare_read_decode_rate`,
the peer `bench.samples` uses too) and the co-click job as `streamrec run itemcf` builds it
(`streams.itemcf.build_flow` with `KafkaBatchSource` and the `NeighbourSink` writing every list to
Redis under a project prefix of its own, deleted at the end); prints medians and the ratio.
`bench.pipeline --no-recall` measures the flow against a stricter peer: the ingest step alone, in
process, with no broker.

    .venv/bin/python -m bench.coclick [--repeats 3] [--only Movie]
"""

from __future__ import annotations

import time
import uuid

import typer
from bytewax.testing import run_main
from rich.console import Console
from rich.progress import Progress

from bench.common import DATA, bare_read_decode_rate, bench_stack, fresh_topic, median
from features.neighbours import KINDS, NeighbourStore
from features.redis_conn import connect
from streams.config import CoClickConfig
from streams.itemcf import NeighbourSink, build_flow
from streams.kafka_io import KafkaBatchSource
from streams.replay import replay
from streams.sinks import CallbackSink
from streams.sources.kuairand import KuaiRandSource
from streams.sources.movielens import MovieLensSource

console = Console()


def coclick_run(bootstrap: str, topic: str, redis_url: str, config: CoClickConfig) -> float:
    """Run the co-click job over `topic` once into a fresh key prefix; return its seconds."""
    project = f"bench_coclick_{uuid.uuid4().hex[:8]}"
    flow = build_flow(
        KafkaBatchSource(bootstrap, topic, tail=False),
        NeighbourSink(redis_url, project, config.per_author),
        CallbackSink(lambda _: None),
        config,
        recoverable=False,
    )
    start = time.perf_counter()
    run_main(flow)
    elapsed = time.perf_counter() - start
    client = connect(redis_url)
    keys = list(client.scan_iter(match=f"{project}:*", count=1_000))
    lists = NeighbourStore(client, project).key(KINDS[0], "").encode()
    assert any(k.startswith(lists) for k in keys), "the co-click job wrote no neighbour list"
    client.delete(*keys)
    client.close()
    return elapsed


def main(
    repeats: int = typer.Option(3, help="Runs of each flow (medians)."),
    only: str | None = typer.Option(None, help="Only the data set whose name starts with this."),
) -> None:
    """Co-click job events/s from Kafka into Redis next to the bare read of the same topic."""
    sets = {
        "MovieLens-100K": MovieLensSource(DATA / "movielens-100k" / "u.data"),
        "KuaiRand subset": KuaiRandSource(
            DATA / "kuairand-27k-likehate" / "processed_standard_kcore_15.tsv"
        ),
    }
    config = CoClickConfig()
    with bench_stack() as state, Progress(console=console) as progress:
        for name, source in sets.items():
            if only is not None and not name.startswith(only):
                continue
            topic = fresh_topic(state.bootstrap, "bench-coclick")
            events = replay(source, state.bootstrap, topic).events
            bare: list[float] = []
            job: list[float] = []
            task = progress.add_task(f"{name}: bare read vs co-click job", total=repeats)
            for _ in range(repeats):
                bare.append(bare_read_decode_rate(state.bootstrap, topic, events))
                job.append(events / coclick_run(state.bootstrap, topic, state.redis_url, config))
                progress.advance(task)
            ratio = median(job) / median(bare)
            progress.console.print(
                f"{name}: {events:,} events; bare read+decode {median(bare):,.0f} events/s, "
                f"co-click job {median(job):,.0f} events/s (medians of {repeats}, same run): "
                f"{ratio:.2f}x the bare read; runs {', '.join(f'{j:,.0f}' for j in job)} / "
                f"{', '.join(f'{b:,.0f}' for b in bare)}"
            )


if __name__ == "__main__":
    typer.run(main)
