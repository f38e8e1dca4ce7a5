"""The exposure job: flow on controlled input, the CLI on the real broker, kill -9 and restart."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from bytewax.testing import TestingSink, TestingSource, run_main

from features.exposure import ExposureConfig, ExposureFilter, hwm_key
from infra.config import Settings
from infra.stack import StackState
from streams.events import Event, decode_dead_letter, encode_event
from streams.exposure import ExposureSink, build_flow
from streams.kafka_io import RawBatch, make_producer
from streams.replay import replay
from streams.sources import ListSource
from streams.sources.synthetic import SyntheticConfig
from streams.summary import summarize_dead_letters
from tests.streams.helpers import (
    CLI,
    Job,
    cli_env,
    crash_mid_replay,
    create_topics,
    events_fixture,
    recoverable_run,
    run_to_end,
)

DAY = 86_400_000


@pytest.fixture
def ns(redis_client: redis.Redis) -> Iterator[str]:
    """A fresh exposure namespace, deleted afterwards."""
    name = f"test-expflow-{uuid.uuid4().hex[:10]}"
    yield name
    keys = list(redis_client.scan_iter(match=f"{name}:*", count=1_000))
    if keys:
        redis_client.delete(*keys)


def _shown(events: list[Event]) -> dict[str, list[str]]:
    by_user: dict[str, list[str]] = {}
    for e in events:
        if e.type == "impression":
            by_user.setdefault(e.user_id, []).append(e.note_id)
    return by_user


def _missed(client: redis.Redis, ns: str, events: list[Event]) -> list[tuple[str, str]]:
    bloom = ExposureFilter(client, ns)
    missed = []
    for user, notes in _shown(events).items():
        missed += [(user, n) for n, s in zip(notes, bloom.seen(user, notes), strict=True) if not s]
    return missed


def test_flow_sets_impressions_only_and_sends_bad_events_to_the_dlq(
    redis_url: str, redis_client: redis.Redis, ns: str
) -> None:
    t0 = 20_000 * DAY
    good = [
        Event("e0", t0, "u1", "shown-1", "impression"),
        Event("e1", t0 + 2 * DAY, "u1", "clicked-only", "click"),  # moves the clock too
        Event("e2", t0 + DAY, "u1", "shown-2", "impression"),  # the next slice
        Event("e3", t0 + 7, "u2", "shown-1", "impression"),
    ]
    values = [encode_event(good[0]), b"{oops", encode_event(good[1]), b'{"ts": 1}']
    values += [encode_event(e) for e in good[2:]]
    batches = [
        RawBatch("t", 0, [None] * 4, values[:4], [0, 1, 2, 3]),
        RawBatch("t", 1, [None] * 2, values[4:], [0, 1]),
    ]
    dead: list = []
    config = ExposureConfig(namespace=ns)
    run_main(build_flow(TestingSource(batches), ExposureSink(redis_url, config), TestingSink(dead)))
    letters = sorted((x.reason, x.flow) for x in map(decode_dead_letter, (d.value for d in dead)))
    assert letters == [("missing_field", "exposure"), ("not_json", "exposure")]
    bloom = ExposureFilter(redis_client, ns)
    assert bloom.seen("u1", ["shown-1", "shown-2", "clicked-only"]) == [True, True, False]
    assert bloom.unseen("u2", ["shown-2", "shown-1", "other"]) == ["shown-2", "other"]
    assert int(redis_client.get(hwm_key(ns))) == t0 + 2 * DAY


def _job_config(tmp: Path, topic: str, ns: str) -> Path:
    data = {
        "kafka": {"topics": {"interactions": topic, "dlq": f"{topic}.dlq", "partitions": 4}},
        "exposure": {"namespace": ns},
    }
    path = tmp / "settings.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


events = events_fixture(
    SyntheticConfig(seed=9, users=300, notes=2_000, request_gap_ms=2_000.0), 30_000
)


@pytest.fixture
def job(
    local_stack: StackState,
    settings: Settings,
    redis_url: str,
    topic_name: str,
    tmp_path: Path,
    ns: str,
) -> Job:
    create_topics(local_stack.bootstrap, topic_name)
    config = _job_config(tmp_path, topic_name, ns)
    env = cli_env(settings.data_dir, redis_url)
    return Job(local_stack.bootstrap, topic_name, config, env, redis_url, hwm_key(ns))


def test_bounded_run_of_two_processes_then_check_on_the_cli(
    job: Job, redis_client: redis.Redis, ns: str, events: list[Event]
) -> None:
    subset = events[:8_000]
    replay(ListSource(subset, 1_000), job.bootstrap, job.topic)
    producer = make_producer(job.bootstrap)
    producer.produce(job.topic, b'{"event_id": "x"}', b"u-bad")
    producer.flush(10)
    config, env = job.config, job.env
    run_to_end(["run", "exposure", "--processes", "2", "--config", str(config)], env)
    assert _missed(redis_client, ns, subset) == []
    assert int(redis_client.get(hwm_key(ns))) == max(e.ts for e in subset)
    dead = summarize_dead_letters(job.bootstrap, f"{job.topic}.dlq")
    assert dead == {("missing_field", "ts"): 1}
    user, notes = min(_shown(subset).items(), key=lambda kv: len(kv[1]))
    asked = [notes[0], "never-shown"]
    want = ExposureFilter(redis_client, ns).seen(user, asked)
    check = [str(CLI), "exposure", "check", user, *asked, "--config", str(config)]
    out = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    cells = [line.split("│")[1:3] for line in out.stdout.splitlines() if line.startswith("│")]
    assert [(n.strip(), v.strip()) for n, v in cells] == [
        (note, "yes" if was else "no") for note, was in zip(asked, want, strict=True)
    ]
    assert want[0]
    assert "30 slices" in out.stdout


def test_kill_9_mid_replay_then_restart_every_impression_is_seen(
    job: Job, redis_client: redis.Redis, tmp_path: Path, ns: str, events: list[Event]
) -> None:
    recovery = tmp_path / "recovery"
    base = recoverable_run("exposure", job.config, recovery)
    quarter = len(events) // 4
    crashed_at = crash_mid_replay(
        job, base, events, quarter, batch=500, rate=5_000.0, recovery=recovery
    )
    assert crashed_at < events[-1].ts
    assert _missed(redis_client, ns, events) != []  # the crash really left work undone
    run_to_end(base, job.env)
    assert _missed(redis_client, ns, events) == []
    assert job.hwm() == events[-1].ts
