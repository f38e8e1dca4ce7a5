"""`streamrec learn full` then `streamrec learn online --until-end` against the session's stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from features.samples import encode_batch, samples_table
from infra.config import Settings
from infra.stack import StackState, ensure_topics
from learners.inference import Ranker
from learners.snapshots import SnapshotReader
from streams.kafka_io import make_producer
from tests.learners.helpers import synthetic, to_batch


def _cli(args: list[str], settings: Settings, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMREC_DATA_DIR": str(settings.data_dir), "COLUMNS": "200"}
    cli = Path(sys.executable).with_name("streamrec")
    return subprocess.run(
        [cli, *args, "--config", str(config)], env=env, capture_output=True, text=True, timeout=300
    )


def test_learn_full_then_online_until_end(
    local_stack: StackState, settings: Settings, topic_name: str, tmp_path: Path
) -> None:
    log_dir, root = tmp_path / "log", tmp_path / "snapshots"
    log_dir.mkdir()
    cols, _ = synthetic(3_000, seed=21)
    pq.write_table(samples_table(to_batch(cols, "log").samples), log_dir / "part-x-000000.parquet")
    topics = {
        "training_samples": f"{topic_name}-samples",
        "embedding_snapshots": f"{topic_name}-snap",
        "dlq": f"{topic_name}-dlq",
    }
    ensure_topics(local_stack.bootstrap, list(topics.values()), 2)
    config = tmp_path / "settings.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {"topics": topics},
                # one delta, at the end: the 1 s cadence adds one whenever the run outlasts it
                "snapshots": {"root": str(root), "delta_every_s": 3600},
                "learn": {"batch_size": 256},
            }
        )
    )
    done = _cli(["learn", "full", "--log-dir", str(log_dir)], settings, config)
    assert done.returncode == 0, done.stderr
    assert "published ranker version 1" in done.stdout
    producer = make_producer(local_stack.bootstrap)
    fresh, _ = synthetic(1_000, seed=22, users=400)
    for i, part in enumerate(fresh.batches(200)):
        producer.produce(topics["training_samples"], value=encode_batch(to_batch(part, f"k{i}")))
    producer.produce(topics["training_samples"], value=b"not a batch")
    producer.flush(10)
    done = _cli(["learn", "online", "--until-end"], settings, config)
    assert done.returncode == 0, done.stderr
    assert "1 bad messages" in done.stdout
    for model in ("ranker", "retriever", "preranker"):  # learn full published all three
        snap = SnapshotReader(root, model).latest()
        assert snap.versions == (1, 2) and snap.manifest.kind == "delta"
    snap = SnapshotReader(root, "ranker").latest()
    assert sum(snap.manifest.meta["offsets"].values()) == 6  # 5 batches + the bad message
    ranker = Ranker.from_snapshot(snap)
    scores = ranker.score(
        fresh.user_id[0],
        fresh.note_id[:5],
        fresh.author_id[:5],
        fresh.category[:5],
        fresh.user_stats[0],
        fresh.note_stats[:5],
    )
    assert ((scores["click"] > 0) & (scores["click"] < 1)).all()
