"""`streamrec learn online --metrics-port P`: the learner's progress and its lag on
training-samples, served while it runs, in text promtool accepts."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from features.samples import encode_batch, samples_table
from infra.config import Settings
from infra.processes import free_port
from infra.stack import StackState, ensure_topics
from streams.kafka_io import make_producer
from tests.infra.promtool import check_metrics
from tests.infra.test_monitoring import _scrape, _sum
from tests.learners.helpers import synthetic, to_batch
from tests.streams.helpers import CLI, job_output, start_job, wait_for


def test_learn_online_serves_its_progress_and_lag(
    local_stack: StackState, settings: Settings, topic_name: str, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    cols, _ = synthetic(2_000, seed=31)
    pq.write_table(samples_table(to_batch(cols, "log").samples), log_dir / "part-x-000000.parquet")
    topics = {
        "training_samples": f"{topic_name}-samples",
        "embedding_snapshots": f"{topic_name}-snap",
        "dlq": f"{topic_name}-dlq",
    }
    ensure_topics(local_stack.bootstrap, list(topics.values()), 2)
    config = tmp_path / "settings.yaml"
    data = {
        "kafka": {"topics": topics},
        "snapshots": {"root": str(tmp_path / "snapshots")},
        "learn": {"batch_size": 256},
    }
    config.write_text(yaml.safe_dump(data))
    env = {**os.environ, "STREAMREC_DATA_DIR": str(settings.data_dir)}
    full = ["learn", "full", "--log-dir", str(log_dir), "--config", str(config)]
    done = subprocess.run([CLI, *full], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    producer = make_producer(local_stack.bootstrap)
    fresh, _ = synthetic(1_000, seed=32, users=300)
    for i, part in enumerate(fresh.batches(200)):
        producer.produce(topics["training_samples"], value=encode_batch(to_batch(part, f"k{i}")))
    producer.produce(topics["training_samples"], value=b"not a batch")
    assert producer.flush(10) == 0

    port = free_port()
    proc = start_job(["learn", "online", "--metrics-port", str(port), "--config", str(config)], env)
    try:

        def trained() -> bool:
            s = _scrape(port)
            return (
                _sum(s, "streamrec_learner_bad_messages_total") == 1
                and _sum(s, "streamrec_job_consumer_position", flow="learn-online") == 6
            )

        wait_for(trained, timeout=180, what="the learner to read the 6 messages")
        samples = _scrape(port)
        assert _sum(samples, "streamrec_job_consumer_lag", flow="learn-online") == 0
        assert _sum(samples, "streamrec_job_log_end_offset", flow="learn-online") == 6
        assert 0 <= _sum(samples, "streamrec_learner_auc", task="click") <= 1  # 1,000 samples
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            check_metrics(r.read())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # SIGINT is ignored under a background shell
        out = job_output(proc, timeout=60)
    assert f"metrics at http://127.0.0.1:{port}/metrics" in out, out
