"""The CLI fails in one line: unreachable broker or Redis, bad settings, bad flags -> one line on
stderr naming the service or setting, the documented exit code (docs/operations.md, "CLI failures
and exit codes"), the traceback only with `--debug`; `infra status` asks each service; jobs say
when they start and what they did when they end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import cli_errors
from infra.processes import free_port
from infra.stack import STATE_FILE
from streams.errors import KafkaError
from streams.events import Event
from streams.kafka_io import make_producer
from streams.replay import replay
from streams.sources import ListSource
from tests.streams.helpers import create_topics, job_config

CLI = Path(sys.executable).with_name("streamrec")
FAST_S = 15.0
"""Every failure below answers within this (the broker's probe waits 3 s, Redis's 2 s)."""


def _run(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    done = subprocess.run(
        [CLI, *args], env=env, capture_output=True, text=True, timeout=FAST_S + 30
    )
    return done, time.monotonic() - t0


def _env(data_dir: Path, bootstrap: str | None, redis_url: str | None) -> dict[str, str]:
    env = {**os.environ, "STREAMREC_DATA_DIR": str(data_dir), "COLUMNS": "80"}
    for name, value in (("KAFKA_BOOTSTRAP", bootstrap), ("REDIS_URL", redis_url)):
        env.pop(name, None)
        if value is not None:
            env[name] = value
    env.pop("STREAMREC_CONFIG", None)
    env.pop(cli_errors.DEBUG_ENV, None)
    return env


def _one_line(done: subprocess.CompletedProcess[str], code: int, *names: str) -> str:
    """Assert `done` failed with `code` and one stderr line naming each of `names`; return it."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == code, done.stdout + done.stderr
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines[0].startswith("error: ")
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def closed() -> tuple[str, str]:
    """A broker address and a Redis URL where nothing listens."""
    return f"127.0.0.1:{free_port()}", f"redis://127.0.0.1:{free_port()}/0"


@pytest.mark.parametrize(
    "args",
    [
        ["topics", "summary"],
        ["infra", "up"],
        ["learn", "online", "--until-end"],
        ["serve", "--port", "0"],
        ["run", "stats", "--until-end"],
        ["run", "validate", "--until-end", "--processes", "2"],
        ["replay", "synthetic", "--limit", "1000", "--users", "10", "--notes", "20"],
        ["replay", "movielens", "--limit", "10"],
    ],
)
def test_no_broker_is_one_line_exit_3(
    args: list[str], closed: tuple[str, str], tmp_path: Path
) -> None:
    bootstrap, redis_url = closed
    done, took = _run(args, _env(tmp_path, bootstrap, redis_url))
    _one_line(done, cli_errors.EXIT_KAFKA, "Kafka", bootstrap, "KAFKA_BOOTSTRAP")
    assert took < FAST_S


@pytest.mark.parametrize(
    "args", [["features", "get", "user", "u1"], ["exposure", "check", "u1", "n1", "n2"]]
)
def test_no_redis_is_one_line_exit_4(
    args: list[str], closed: tuple[str, str], tmp_path: Path
) -> None:
    bootstrap, redis_url = closed
    done, took = _run(args, _env(tmp_path, bootstrap, redis_url))
    _one_line(done, cli_errors.EXIT_REDIS, "Redis", redis_url, "REDIS_URL")
    assert took < FAST_S


def test_a_job_with_its_broker_but_no_redis_is_exit_4(
    bootstrap: str, closed: tuple[str, str], tmp_path: Path
) -> None:
    done, _ = _run(["run", "stats", "--until-end"], _env(tmp_path, bootstrap, closed[1]))
    _one_line(done, cli_errors.EXIT_REDIS, closed[1], "REDIS_URL")


def test_the_recorded_stack_gone_says_run_infra_up(tmp_path: Path, closed: tuple[str, str]):
    bootstrap, redis_url = closed
    _record(tmp_path, bootstrap, redis_url)
    done, _ = _run(["topics", "summary"], _env(tmp_path, None, None))
    _one_line(done, cli_errors.EXIT_KAFKA, bootstrap, STATE_FILE, "streamrec infra up")


def test_debug_prints_the_traceback_then_the_line(closed: tuple[str, str], tmp_path: Path):
    redis_url = closed[1]
    done, _ = _run(["--debug", "features", "get", "user", "u1"], _env(tmp_path, *closed))
    assert done.returncode == cli_errors.EXIT_REDIS
    assert "Traceback (most recent call last)" in done.stderr
    assert "RedisUnreachableError" in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no Redis answers at " + redis_url), last


@pytest.mark.parametrize(
    ("args", "settings", "names"),
    [
        (["run", "stats", "--processes", "0"], None, ["--processes"]),
        (["run", "exposure", "--processes", "65"], None, ["--processes"]),
        (["features", "get", "team", "t1"], None, ["'user' or 'note'", "features get --help"]),
        (["exposure", "check"], None, ["Missing argument 'user'"]),
        (["run", "stats", "--no-such-flag"], None, ["--no-such-flag"]),
        (["topics", "summary", "--config", "{cfg}"], "- a\n- b\n", ["{cfg}", "not a mapping"]),
        (["topics", "summary", "--config", "{cfg}"], "kafka: [\n", ["{cfg}", "cannot read"]),
        (
            ["topics", "summary", "--config", "{cfg}"],
            "kafka:\n  topics:\n    partitions: 0\n",
            ["{cfg}", "partitions"],
        ),
        (["topics", "summary", "--config", "{cfg}.missing"], None, ["{cfg}.missing"]),
    ],
)
def test_bad_flags_and_settings_are_one_line_exit_2(
    args: list[str],
    settings: str | None,
    names: list[str],
    closed: tuple[str, str],
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "settings.yaml"
    if settings is not None:
        cfg.write_text(settings)
    args = [a.replace("{cfg}", str(cfg)) for a in args]
    done, _ = _run(args, _env(tmp_path, *closed))
    _one_line(done, cli_errors.EXIT_USAGE, *(n.replace("{cfg}", str(cfg)) for n in names))


def test_nothing_known_is_exit_5(tmp_path: Path) -> None:
    done, _ = _run(["features", "get", "user", "u1"], _env(tmp_path, None, None))
    _one_line(done, cli_errors.EXIT_STACK, "streamrec infra up", "REDIS_URL")


def _record(data_dir: Path, bootstrap: str, redis_url: str) -> None:
    """A stack recorded by `infra up` (services found, none started) at these addresses."""
    path = data_dir / "stack" / STATE_FILE
    path.parent.mkdir(parents=True)
    found = {"pid": None, "log": None}
    path.write_text(
        json.dumps(
            {
                "kafka": {"address": bootstrap, **found},
                "redis": {"address": redis_url, **found},
                "topics": [],
            }
        )
    )


def _status(env: dict[str, str]) -> tuple[int, dict[str, str]]:
    done, took = _run(["infra", "status"], env)
    assert took < FAST_S
    assert done.stderr == "", done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert set(rows) == {"kafka", "redis"}, done.stdout
    return done.returncode, rows


def test_infra_status_asks_each_service(
    bootstrap: str, redis_url: str, closed: tuple[str, str], tmp_path: Path
) -> None:
    _record(tmp_path, bootstrap, redis_url)
    code, rows = _status(_env(tmp_path, None, None))
    assert code == 0
    assert re.search(rf"^kafka +{bootstrap} +up \(", rows["kafka"]), rows
    assert re.search(r" up \(\d+ ms\)", rows["redis"]), rows
    assert "found by `streamrec infra up`" in rows["redis"]

    # the recorded Redis is gone: status says so (it asks, it does not trust the record)
    _, dead_redis = closed
    (tmp_path / "stack" / STATE_FILE).unlink()
    (tmp_path / "stack").rmdir()
    _record(tmp_path, bootstrap, dead_redis)
    code, rows = _status(_env(tmp_path, None, None))
    assert code == cli_errors.EXIT_REDIS
    assert " up (" in rows["kafka"]
    assert f"{dead_redis}  DOWN: " in rows["redis"] and "refused" in rows["redis"], rows

    # the settings win over the record, and both down: the broker's code
    code, rows = _status(_env(tmp_path, *closed))
    assert code == cli_errors.EXIT_KAFKA
    assert "DOWN" in rows["kafka"] and "set by KAFKA_BOOTSTRAP" in rows["kafka"], rows
    assert "DOWN" in rows["redis"] and "set by REDIS_URL" in rows["redis"], rows


def _events(n: int) -> list[Event]:
    return [
        Event(event_id=f"e{i}", ts=1_000 + i, user_id="u", note_id="n", type="impression")
        for i in range(n)
    ]


def test_replay_fails_fast_and_quietly_without_a_broker(
    closed: tuple[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    """The library itself (the CLI asks the broker first): no 300 s wait, no client log flood."""
    t0 = time.monotonic()
    with pytest.raises(KafkaError, match=re.escape(closed[0])):
        replay(ListSource(_events(10), 5), closed[0], "t-nowhere")
    assert time.monotonic() - t0 < FAST_S
    out, err = capfd.readouterr()
    assert "rdkafka" not in out + err


def test_a_bounded_job_says_when_it_starts_and_what_it_did(
    bootstrap: str, redis_url: str, topic_name: str, tmp_path: Path
) -> None:
    config, _ = job_config(tmp_path, topic_name)
    create_topics(bootstrap, topic_name)
    producer = make_producer(bootstrap)
    producer.produce(topic_name, b'{"ts": "x"}', b"u1")  # a dead letter (not an event)
    producer.produce(topic_name, b"not json", b"u2")  # another: not_json
    assert producer.flush(10) == 0
    replay(ListSource(_events(5), 5), bootstrap, topic_name)

    env = _env(tmp_path / "data", bootstrap, redis_url)
    done, _ = _run(["run", "validate", "--until-end", "--config", str(config)], env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    start = next(line for line in lines if line.startswith("validate (1 process): reading"))
    assert f"reading {topic_name} on {bootstrap} until its end" in start, start
    assert "no recovery store" in start
    summary = lines[-1]
    assert re.fullmatch(
        r"validate \(1 process\): done in [\d.,]+ s: 7 events read, 2 dead letters "
        r"\(\w+ 1, \w+ 1\)",
        summary,
    ), summary
    assert "not_json 1" in summary


def test_replay_stops_soon_after_its_broker_dies(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from tests.streams.test_kafka_io import Broker

    broker = Broker(tmp_path / "tansu.log")
    broker.start()
    killed: list[float] = []

    def kill_once(_n: int) -> None:
        if not killed:
            broker.stop()
            killed.append(time.monotonic())

    try:
        create_topics(broker.address, "t-dies")
        with pytest.raises(KafkaError, match=re.escape(broker.address)):
            # paced: 20 s of events, the broker killed after the first chunk
            replay(ListSource(_events(4_000), 100), broker.address, "t-dies", 200, kill_once)
    finally:
        broker.stop()
    assert killed and time.monotonic() - killed[0] < FAST_S
    out, err = capfd.readouterr()
    assert "rdkafka" not in out + err
