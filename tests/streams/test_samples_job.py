"""The sample joiner end to end: Kafka -> `streamrec run samples --until-end` -> training-samples
and the parquet log; the same samples with 1 or 2 processes as the in-process flow."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
import yaml

from features.paths import DataPaths
from features.samples import SAMPLE_COLUMNS, decode_batch, read_sample_log
from infra.stack import StackState, ensure_topics
from streams.events import Event
from streams.kafka_io import read_to_end
from streams.replay import replay
from streams.sources import ListSource
from streams.sources.synthetic import SyntheticConfig, SyntheticSource
from tests.streams.helpers import (
    CLI,
    job_env,
    recovery_progress,
    resume_epochs,
    run,
    start_job,
    wait_for,
)

WORLD = SyntheticConfig(seed=9, users=120, notes=300, request_gap_ms=20_000.0)


@pytest.fixture(scope="module")
def events() -> list[Event]:
    return [e for b in SyntheticSource(WORLD, limit=12_000).batches() for e in b]


@pytest.mark.parametrize("processes", [1, 2])
def test_bounded_run_through_kafka_equals_the_in_process_flow(
    local_stack: StackState,
    redis_url: str,
    topic_name: str,
    tmp_path: Path,
    events: list[Event],
    processes: int,
) -> None:
    samples_topic = f"{topic_name}.samples"
    ensure_topics(local_stack.bootstrap, [topic_name, f"{topic_name}.dlq", samples_topic], 4)
    replay(ListSource(events, 1_000), local_stack.bootstrap, topic_name)
    log_dir = DataPaths(tmp_path).sample_log
    config = tmp_path / "settings.yaml"
    samples = {"negative_keep_rate": 0.5, "batch_size": 256, "shards": 4}
    topics = {
        "interactions": topic_name,
        "dlq": f"{topic_name}.dlq",
        "training_samples": samples_topic,
    }
    config.write_text(yaml.safe_dump({"kafka": {"topics": topics}, "samples": samples}))
    done = subprocess.run(
        [CLI, "run", "samples", "--until-end", "--processes", str(processes), "--config", config],
        env=job_env(tmp_path, local_stack.bootstrap, redis_url),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    want = run(events, negative_keep_rate=0.5, shards=4, allowed_lateness_ms=60_000)
    assert len(want.samples) > 1_000
    batches = [decode_batch(r.value) for chunk in read_to_end(local_stack.bootstrap, samples_topic)
               for r in chunk]  # fmt: skip
    from_kafka = sorted((s for b in batches for s in b.samples), key=lambda s: s.sample_id)
    assert from_kafka == want.samples
    assert len({b.batch_id for b in batches}) == len(batches)
    log = read_sample_log(log_dir).to_pylist()
    by_id = {s.sample_id: s for s in want.samples}
    assert sorted(r["sample_id"] for r in log) == sorted(by_id)
    assert all(r == {c: getattr(by_id[r["sample_id"]], c) for c in SAMPLE_COLUMNS} for r in log)
    assert "samples" in done.stdout and "kept_positive" in done.stdout


def test_kill_9_mid_stream_then_restart_loses_nothing(
    local_stack: StackState,
    redis_url: str,
    topic_name: str,
    tmp_path: Path,
    events: list[Event],
) -> None:
    samples_topic = f"{topic_name}.samples"
    ensure_topics(local_stack.bootstrap, [topic_name, f"{topic_name}.dlq", samples_topic], 4)
    log_dir = DataPaths(tmp_path).sample_log
    config = tmp_path / "settings.yaml"
    samples = {"negative_keep_rate": 0.5, "shards": 4}
    samples["log_rows_per_part"] = 300
    topics = {
        "interactions": topic_name,
        "dlq": f"{topic_name}.dlq",
        "training_samples": samples_topic,
    }
    config.write_text(yaml.safe_dump({"kafka": {"topics": topics}, "samples": samples}))
    env = job_env(tmp_path, local_stack.bootstrap, redis_url)
    recovery = tmp_path / "recovery"
    base = ["run", "samples", "--config", str(config), "--recovery-dir", str(recovery)]
    base += ["--snapshot-interval", "0.5"]
    third = len(events) // 3
    replay(ListSource(events[:third], 1_000), local_stack.bootstrap, topic_name)
    job = start_job(base, env)
    producer: threading.Thread | None = None
    try:
        wait_for(
            lambda: len(list(log_dir.glob("part-*.parquet"))) >= 2,
            timeout=120,
            what="the job to write parquet parts from the first third",
        )
        producer = threading.Thread(
            target=replay,
            args=(ListSource(events[third:], 100), local_stack.bootstrap, topic_name),
            kwargs={"rate": 800.0},
        )
        producer.start()
        start_epoch = recovery_progress(recovery)
        wait_for(
            lambda: recovery_progress(recovery) > start_epoch + 1,
            timeout=120,
            what="the job to commit snapshots mid-replay",
        )
        assert producer.is_alive(), "the replay ended before the crash"
        os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        if producer is not None:
            producer.join()
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    done = subprocess.run(
        [CLI, *base, "--until-end"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    first, resumed = resume_epochs(recovery)[-2:]
    assert resumed > first  # resumed from a mid-stream snapshot
    want = {s.sample_id: s for s in run(events, negative_keep_rate=0.5, shards=4).samples}
    log = read_sample_log(log_dir).to_pylist()
    assert sorted(r["sample_id"] for r in log) == sorted(want)
    assert all(r == {c: getattr(want[r["sample_id"]], c) for c in SAMPLE_COLUMNS} for r in log)
    batches = [decode_batch(r.value) for chunk in read_to_end(local_stack.bootstrap, samples_topic)
               for r in chunk]  # fmt: skip
    on_kafka = {s.sample_id: s for b in batches for s in b.samples}  # at least once
    assert on_kafka == want
