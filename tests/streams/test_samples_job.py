"""The sample joiner end to end: Kafka -> `streamrec run samples --until-end` -> training-samples
and the parquet log; the same samples with 1 or 2 processes as the in-process flow."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from features.paths import DataPaths
from features.samples import SAMPLE_COLUMNS, decode_batch, read_sample_log
from infra.stack import StackState
from streams.events import Event
from streams.kafka_io import read_to_end
from streams.replay import replay
from streams.sources import ListSource
from streams.sources.synthetic import SyntheticConfig
from tests.streams.helpers import (
    Job,
    crash_mid_replay,
    create_topics,
    events_fixture,
    job_env,
    recoverable_run,
    recovery_progress,
    resume_epochs,
    run,
    run_to_end,
)

events = events_fixture(
    SyntheticConfig(seed=9, users=120, notes=300, request_gap_ms=20_000.0), 12_000
)


@pytest.fixture
def samples_job(
    local_stack: StackState, redis_url: str, topic_name: str, tmp_path: Path
) -> Callable[..., Job]:
    """Make the samples job on fresh topics (samples settings as keywords; data in tmp_path)."""

    def make(**samples: object) -> Job:
        samples_topic = f"{topic_name}.samples"
        create_topics(local_stack.bootstrap, topic_name, samples_topic)
        topics = {
            "interactions": topic_name,
            "dlq": f"{topic_name}.dlq",
            "training_samples": samples_topic,
        }
        config = tmp_path / "settings.yaml"
        config.write_text(yaml.safe_dump({"kafka": {"topics": topics}, "samples": samples}))
        env = job_env(tmp_path, local_stack.bootstrap, redis_url)
        return Job(local_stack.bootstrap, topic_name, config, env, redis_url)

    return make


@pytest.mark.parametrize("processes", [1, 2])
def test_bounded_run_through_kafka_equals_the_in_process_flow(
    samples_job: Callable[..., Job], tmp_path: Path, events: list[Event], processes: int
) -> None:
    job = samples_job(negative_keep_rate=0.5, batch_size=256, shards=4)
    samples_topic = f"{job.topic}.samples"
    replay(ListSource(events, 1_000), job.bootstrap, job.topic)
    log_dir = DataPaths(tmp_path).sample_log
    args = ["run", "samples", "--processes", str(processes), "--config", str(job.config)]
    done = run_to_end(args, job.env)

    want = run(events, negative_keep_rate=0.5, shards=4, allowed_lateness_ms=60_000)
    assert len(want.samples) > 1_000
    batches = [decode_batch(r.value) for chunk in read_to_end(job.bootstrap, samples_topic)
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
    samples_job: Callable[..., Job], tmp_path: Path, events: list[Event]
) -> None:
    job = samples_job(negative_keep_rate=0.5, shards=4, log_rows_per_part=300)
    samples_topic = f"{job.topic}.samples"
    log_dir = DataPaths(tmp_path).sample_log
    recovery = tmp_path / "recovery"
    base = recoverable_run("samples", job.config, recovery)
    crash_mid_replay(
        job,
        base,
        events,
        len(events) // 3,
        started=lambda: len(list(log_dir.glob("part-*.parquet"))) >= 2,
        started_what="the job to write parquet parts from the first third",
        batch=100,
        rate=800.0,
        midway=lambda epoch: recovery_progress(recovery) > epoch + 1,
        midway_what="the job to commit snapshots mid-replay",
        recovery=recovery,
    )
    run_to_end(base, job.env)
    first, resumed = resume_epochs(recovery)[-2:]
    assert resumed > first  # resumed from a mid-stream snapshot
    want = {s.sample_id: s for s in run(events, negative_keep_rate=0.5, shards=4).samples}
    log = read_sample_log(log_dir).to_pylist()
    assert sorted(r["sample_id"] for r in log) == sorted(want)
    assert all(r == {c: getattr(want[r["sample_id"]], c) for c in SAMPLE_COLUMNS} for r in log)
    batches = [decode_batch(r.value) for chunk in read_to_end(job.bootstrap, samples_topic)
               for r in chunk]  # fmt: skip
    on_kafka = {s.sample_id: s for b in batches for s in b.samples}  # at least once
    assert on_kafka == want
