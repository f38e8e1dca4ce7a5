"""Online learning speed, event-to-delta latency through the real joiner, delta vs full size.

    .venv/bin/python -m bench.learning [--events 200000] [--repeat 3] [--latency-s 60]

1. Throughput: synthetic events -> the real joiner (in process) -> samples, encoded as
   `training-samples` messages of 512; after a full training on the first 20 %, the online
   learner (`OnlineLearner.add`: decode + both models' ID-embedding steps) consumes the rest.
   Peer in the same run: full training (every parameter) on the same samples.
2. Sizes: a full snapshot of the ranker vs the delta of the rows changed by 10 s of samples at
   the target rate (200k samples) - and by one 512-sample message.
3. Latency: `streamrec run samples` and `streamrec learn online` run as processes against the
   broker; events stamped with the wall clock are produced at `--rate`; for every impression
   produced after the first delta whose sample was kept (down-sampling drops negatives, which
   then update nothing), the time until a ranker delta whose `note` rows include its
   note and whose event-time high-water mark has reached the impression. The joiner runs with
   a 2 s attribution window and 0.5 s lateness (a sample cannot exist before its window closes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import matplotlib
import msgspec
import numpy as np
import torch
import typer
import yaml
from rich.console import Console

from bench.common import bench_stack, fresh_topic, median, percentile
from bench.quality import join_events
from features.samples import SampleBatch, encode_batch
from learners.config import LearnConfig, RankerConfig, RetrieverConfig
from learners.full import train_pass
from learners.inputs import Columns
from learners.online import Message, OnlineLearner
from learners.snapshots import SnapshotConfig, SnapshotReader, SnapshotWriter
from learners.training import RankerState, RetrieverState

matplotlib.use("Agg")
console = Console()
OUT = Path(__file__).resolve().parent / "out"
MESSAGE = 512
LINGER_MS = 50
"""Producer linger of the live stream. Tansu's fetch cost grows with a partition's length
per record batch served (memory storage; docs/operations.md), so a stream of tiny batches
(linger 5 ms: 2-3 events per partition) made the broker itself the bottleneck within a minute
(its CPU 23 % -> 127 %); 50 ms batches ~25 events per partition."""
STEADY_AFTER_S = 20.0
"""Impressions produced this long after the first delta count as steady state: the joiner and
the learner start while events are already produced, so the first ones include a backlog."""


def _messages(cols: Columns) -> list[Message]:
    samples = cols.to_samples([f"s{j}" for j in range(len(cols))])
    return [
        Message(0, i, encode_batch(SampleBatch(f"b{i}", 0, 0, samples[lo : lo + MESSAGE])))
        for i, lo in enumerate(range(0, len(samples), MESSAGE))
    ]


def _publish(root: Path, ranker: RankerState, retriever: RetrieverState) -> None:
    cfg = SnapshotConfig(root=root)
    for name, state in (("ranker", ranker), ("retriever", retriever)):
        tables, dense = state.full_state()
        meta = state.meta({"offsets": {}})
        SnapshotWriter(root, name, cfg).publish_full(tables, dense, state.hwm_ms, meta)


def _size(manifest) -> int:
    return sum(manifest.sizes.values())


def throughput(cols: Columns, repeat: int) -> dict[str, float]:
    """Online samples/s (with decoding and without), full-training samples/s, snapshot sizes."""
    config = LearnConfig(batch_size=1024, admit_after=1)
    cut = len(cols) // 5
    warm, rest = cols.take(np.arange(cut)), cols.take(np.arange(cut, len(cols)))
    messages = _messages(rest)
    online_rates, step_rates, full_rates = [], [], []
    figures: dict[str, float] = {}
    for rep in range(repeat):
        emb = config.embedding(16)
        ranker = RankerState.create(RankerConfig(), emb, seed=rep)
        retriever = RetrieverState.create(RetrieverConfig(), emb, seed=rep)
        train_pass(ranker, retriever, warm, config)
        t0 = time.perf_counter()
        train_pass(
            RankerState.create(RankerConfig(), emb, seed=rep),
            RetrieverState.create(RetrieverConfig(), emb, seed=rep),
            rest,
            config,
        )
        full_rates.append(len(rest) / (time.perf_counter() - t0))
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            _publish(root, ranker, retriever)
            snapshots = SnapshotConfig(root=root, delta_every_s=1e9, full_every_s=1e9)
            learner = OnlineLearner.from_latest(config, snapshots)
            t0 = time.perf_counter()
            for m in messages:
                learner.add(m)
            learner.flush()
            online_rates.append(learner.report.samples / (time.perf_counter() - t0))
            step_rates.append(learner.report.samples_per_s)
            if rep == 0:
                figures |= _sizes(learner, rest, config, snapshots)
    figures |= {
        "online samples/s (decode + both models)": median(online_rates),
        "online samples/s (training steps only)": median(step_rates),
        "full training samples/s (peer)": median(full_rates),
        "samples": float(len(rest)),
    }
    return figures


def _sizes(
    learner: OnlineLearner, rest: Columns, config: LearnConfig, snapshots: SnapshotConfig
) -> dict[str, float]:
    full = learner.publish_full()[0]
    learner.train(rest.take(np.arange(min(MESSAGE, len(rest)))))
    small = learner.publish_delta()[0]
    n = min(200_000, len(rest))
    idx = np.arange(n) % len(rest)
    for b in rest.take(idx).batches(config.batch_size):
        learner.train(b)
    big = learner.publish_delta()[0]
    del snapshots
    return {
        "full ranker snapshot bytes": _size(full),
        "full ranker rows": sum(full.rows.values()),
        "delta bytes after 512 samples": _size(small),
        "delta rows after 512 samples": sum(small.rows.values()),
        f"delta bytes after {n:,} samples": _size(big),
        f"delta rows after {n:,} samples": sum(big.rows.values()),
    }


def _stream(bootstrap: str, topic: str, rate: float, seconds: float, log: list) -> None:
    """Produce synthetic events re-stamped with the wall clock; record impressions."""
    from streams.events import encode_event
    from streams.kafka_io import make_producer
    from streams.sources.synthetic import SyntheticConfig, SyntheticSource

    producer = make_producer(bootstrap, **{"linger.ms": LINGER_MS})
    source = SyntheticSource(SyntheticConfig(seed=3, users=2_000, notes=5_000), limit=10**7)
    start = time.time()
    sent = 0
    t_first = None
    for batch in source.batches():
        for e in batch:
            if t_first is None:
                t_first = e.ts
            due = start + sent / rate
            while time.time() < due:
                time.sleep(0.001)
            now_ms = int(time.time() * 1000)
            stamped = msgspec.structs.replace(e, ts=now_ms)
            producer.produce(topic, key=e.user_id.encode(), value=encode_event(stamped))
            if e.type == "impression":
                log.append((e.event_id, e.note_id, now_ms))
            sent += 1
            if sent % 500 == 0:
                producer.poll(0)
            if time.time() - start >= seconds:
                producer.flush(10)
                return
    producer.flush(10)


def _sample_ids(bootstrap: str, topic: str) -> set[str]:
    """Ids of every sample on the training-samples topic (= the impressions' event ids)."""
    from features.samples import decode_batch
    from streams.kafka_io import read_to_end

    return {
        s.sample_id
        for batch in read_to_end(bootstrap, topic)
        for r in batch
        for s in decode_batch(r.value).samples
    }


def latency(
    bootstrap: str,
    redis_url: str,
    warm: Columns,
    rate: float,
    seconds: float,
    delta_every_s: float,
) -> dict:
    """Event produced -> ranker delta containing its note, through the real joiner process."""
    work = Path(tempfile.mkdtemp(prefix="bench-learning-"))
    topics = {
        "interactions": fresh_topic(bootstrap, "lat-in"),
        "training_samples": fresh_topic(bootstrap, "lat-samples"),
        "dlq": fresh_topic(bootstrap, "lat-dlq"),
        "embedding_snapshots": fresh_topic(bootstrap, "lat-snap"),
    }
    root = work / "snapshots"
    config = LearnConfig(batch_size=1024, admit_after=1)
    emb = config.embedding(16)
    ranker = RankerState.create(RankerConfig(), emb)
    retriever = RetrieverState.create(RetrieverConfig(), emb)
    train_pass(ranker, retriever, warm, config)
    _publish(root, ranker, retriever)
    settings = {
        "kafka": {"bootstrap": bootstrap, "topics": topics},
        "snapshots": {"root": str(root), "delta_every_s": delta_every_s},
        "samples": {
            "attribution_window_ms": 2_000,
            "allowed_lateness_ms": 500,
            "batch_max_delay_ms": 200,
            "idle_partition_ms": 2_000,
        },
        "learn": {"batch_size": 1024, "admit_after": 1},
    }
    cfg_file = work / "settings.yaml"
    cfg_file.write_text(yaml.safe_dump(settings))
    env = {
        **os.environ,
        "STREAMREC_DATA_DIR": str(work),
        "KAFKA_BOOTSTRAP": bootstrap,
        "REDIS_URL": redis_url,
    }
    cli = str(Path(sys.executable).with_name("streamrec"))
    procs = [
        subprocess.Popen(
            [cli, *args, "--config", str(cfg_file)],
            env=env,
            stdout=(work / f"{args[1]}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for args in (["run", "samples"], ["learn", "online"])
    ]
    produced: list[tuple[str, str, int]] = []  # event_id, note_id, produced at (ms)
    deltas: list[tuple[int, int, set[str]]] = []  # created_ms, hwm_ms, note ids
    delta_bytes: list[int] = []  # of each ranker delta (the cost of the cadence)
    stop = threading.Event()

    def watch() -> None:
        reader = SnapshotReader(root, "ranker")
        seen: set[int] = set()
        while not stop.is_set():
            for m in reader.versions():
                if m.version in seen or m.kind != "delta":
                    continue
                seen.add(m.version)
                ids = msgspec.json.decode(
                    (root / "ranker" / f"{m.version:010d}" / "ids.json").read_bytes()
                )
                deltas.append((m.created_at_ms, m.hwm_ms, set(ids.get("note", []))))
                delta_bytes.append(_size(m))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        _stream(bootstrap, topics["interactions"], rate, seconds, produced)
        deadline = time.time() + 30
        while time.time() < deadline:
            if deltas and max(d[1] for d in deltas) >= produced[-1][2]:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    watcher.join(5)
    if not deltas:
        raise SystemExit(f"no delta was published; see the logs in {work}")
    first_delta = min(d[0] for d in deltas)
    # Only impressions whose sample reached the learner can update a row: a negative dropped by
    # down-sampling (keep rate a) never does; its note shows up only through other samples.
    kept = _sample_ids(bootstrap, topics["training_samples"])
    probes = [(n, t) for i, n, t in produced if t > first_delta and i in kept]
    lat, steady = [], []
    for note, t in probes:
        hits = [c for c, hwm, ids in deltas if c >= t and hwm >= t and note in ids]
        if hits:
            lat.append((min(hits) - t) / 1000)
            if t > first_delta + STEADY_AFTER_S * 1000:
                steady.append(lat[-1])
    return {
        "steady p50 s": percentile(steady, 50) if steady else float("nan"),
        "steady p99 s": percentile(steady, 99) if steady else float("nan"),
        "steady n": len(steady),
        "probes": len(probes),
        "resolved": len(lat),
        "deltas": len(deltas),
        "deltas per s": len(deltas) / max((max(d[0] for d in deltas) - first_delta) / 1000, 1e-9),
        "delta bytes p50": percentile(delta_bytes, 50),
        "delta bytes per s": sum(delta_bytes)
        / max((max(d[0] for d in deltas) - first_delta) / 1000, 1e-9),
        "p50 s": percentile(lat, 50) if lat else float("nan"),
        "p99 s": percentile(lat, 99) if lat else float("nan"),
        "max s": max(lat) if lat else float("nan"),
        "latencies": lat,
        "work": str(work),
    }


def main(
    events: int = typer.Option(200_000, help="Synthetic events for the throughput part."),
    repeat: int = typer.Option(3, help="Repetitions of the throughput part."),
    rate: float = typer.Option(2_000.0, help="Events/s produced in the latency part."),
    latency_s: float = typer.Option(60.0, help="Seconds of production in the latency part."),
    parts: str = typer.Option("throughput,latency", help="Comma-separated parts to run."),
    delta_every_s: float = typer.Option(
        SnapshotConfig.model_fields["delta_every_s"].default,
        help="The learner's delta cadence in the latency part (default: the shipped one).",
    ),
) -> None:
    """Print the figures; write bench/out/learning_latency.png."""
    import matplotlib.pyplot as plt

    from streams.sources.synthetic import SyntheticConfig, SyntheticSource

    torch.set_num_threads(LearnConfig().threads)
    OUT.mkdir(parents=True, exist_ok=True)
    source = SyntheticSource(SyntheticConfig(seed=7), limit=events)
    cols = join_events([e for b in source.batches() for e in b])
    console.print(f"{events:,} synthetic events -> {len(cols):,} samples (real joiner, a = 1)")
    if "throughput" in parts:
        figures = throughput(cols, repeat)
        for k, v in figures.items():
            console.print(f"{k:45s} {v:,.0f}")
        ratio = (
            figures["online samples/s (decode + both models)"]
            / figures["full training samples/s (peer)"]
        )
        console.print(f"ratio online / full training: {ratio:.2f}x")
    if "latency" not in parts:
        return
    with bench_stack() as state:
        res = latency(
            state.bootstrap,
            state.redis_url,
            cols.take(np.arange(20_000)),
            rate,
            latency_s,
            delta_every_s,
        )
    console.print(
        f"event -> delta: {res['resolved']:,} of {res['probes']:,} impressions resolved, "
        f"{res['deltas']} deltas; p50 {res['p50 s']:.2f} s, p99 {res['p99 s']:.2f} s, "
        f"max {res['max s']:.2f} s (logs {res['work']}); after the first "
        f"{STEADY_AFTER_S:.0f} s of deltas (startup backlog drained): {res['steady n']:,} "
        f"impressions, p50 {res['steady p50 s']:.2f} s, p99 {res['steady p99 s']:.2f} s"
    )
    console.print(
        f"cadence {delta_every_s:g} s: {res['deltas per s']:.2f} ranker deltas/s (each a serving "
        f"swap), median {res['delta bytes p50']:,.0f} bytes, {res['delta bytes per s']:,.0f} "
        "delta bytes/s"
    )
    if res["latencies"]:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(res["latencies"], bins=50)
        ax.set_xlabel("seconds from impression produced to a delta holding its note")
        ax.set_ylabel("impressions")
        ax.set_title(f"event -> delta latency (p99 {res['p99 s']:.1f} s)")
        fig.tight_layout()
        fig.savefig(OUT / "learning_latency.png", dpi=120)


if __name__ == "__main__":
    typer.run(main)
