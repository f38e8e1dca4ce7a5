"""The CLI against the session's stack: replay, summary and the validate job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from infra.config import Settings
from infra.stack import StackState, read_state
from streams.kafka_io import make_producer


def _cli(args: list[str], settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMREC_DATA_DIR": str(settings.data_dir), "COLUMNS": "200"}
    cli = Path(sys.executable).with_name("streamrec")
    return subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=300)


def test_replay_summary_and_validate(
    local_stack: StackState, settings: Settings, topic_name: str
) -> None:
    assert read_state(settings) == local_stack
    truth = settings.data_dir / "truth-cli"
    done = _cli(
        [
            "replay",
            "synthetic",
            "--limit",
            "5000",
            "--users",
            "100",
            "--notes",
            "300",
            "--topic",
            topic_name,
            "--truth-dir",
            str(truth),
        ],
        settings,
    )
    assert done.returncode == 0, done.stderr
    assert "5,000 events" in done.stdout
    assert (truth / "users.parquet").exists()

    done = _cli(["topics", "summary", "--topic", topic_name], settings)
    assert done.returncode == 0, done.stderr
    assert "│ total      │  5,000 │" in done.stdout

    # One bad event in the real interactions topic: the validate job dead-letters it.
    producer = make_producer(local_stack.bootstrap)
    producer.produce(settings.kafka.topics.interactions, json.dumps({"ts": "x"}).encode(), b"k")
    assert producer.flush(10) == 0
    producer.close()
    done = _cli(["run", "validate", "--until-end"], settings)
    assert done.returncode == 0, done.stderr
    done = _cli(["topics", "summary"], settings)
    assert done.returncode == 0, done.stderr
    assert "wrong_type (ts)" in done.stdout  # fields are checked in order
