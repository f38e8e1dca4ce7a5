"""An experiment end to end: events with arms -> Kafka -> `streamrec run experiments` -> the
experiment log -> `streamrec experiments report` (the table, a planted sample-ratio mismatch
flagged, the PNG) and `streamrec experiments plan --from`."""

from __future__ import annotations

import subprocess
import zlib
from pathlib import Path

import msgspec
import yaml

from features.experiment_log import read_experiment_log
from features.experiments import assign, parse_experiments
from features.paths import DataPaths
from infra.stack import StackState
from streams.replay import replay
from streams.sources import ListSource
from streams.sources.synthetic import SyntheticConfig
from tests.streams.helpers import CLI, create_topics, job_env, run_to_end, synthetic_events

EXPERIMENTS = {
    "layers": [
        {
            "name": "ranking",
            "experiments": [
                {
                    "name": "fusion",
                    "buckets": [0, 100],
                    "arms": [
                        {"name": "control"},
                        {"name": "likes", "overrides": {"fusion": {"weights": {"like": 4.0}}}},
                    ],
                }
            ],
        },
        {
            "name": "retrieval",
            "experiments": [
                {"name": "ctx", "buckets": [0, 100], "arms": [{"name": "on"}, {"name": "off"}]}
            ],
        },
    ]
}


def test_report_of_an_experiment_run_through_kafka_flags_a_planted_mismatch(
    local_stack: StackState, redis_url: str, topic_name: str, tmp_path: Path
) -> None:
    config = parse_experiments(EXPERIMENTS)
    world = SyntheticConfig(seed=3, users=600, notes=500, request_gap_ms=5_000.0)
    events, lost = [], set()
    for e in synthetic_events(world, 30_000):
        if e.type == "impression":
            arms = assign(config, e.user_id)
            # The planted mismatch: half the "likes" users' impressions lost their arms.
            if arms["fusion"] == "likes" and zlib.crc32(e.user_id.encode()) % 2 == 0:
                lost.add(e.user_id)
                arms = {k: v for k, v in arms.items() if k != "fusion"}
            e = msgspec.structs.replace(e, arms=arms, v=2)
        events.append(e)
    create_topics(local_stack.bootstrap, topic_name)
    replay(ListSource(events, 2_000), local_stack.bootstrap, topic_name)
    yaml_path = tmp_path / "experiments.yaml"
    yaml_path.write_text(yaml.safe_dump(EXPERIMENTS))
    settings = tmp_path / "settings.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "kafka": {"topics": {"interactions": topic_name, "dlq": f"{topic_name}.dlq"}},
                "serving": {"experiments": str(yaml_path)},
            }
        )
    )
    data_dir = tmp_path / "data"
    env = job_env(data_dir, local_stack.bootstrap, redis_url)
    done = run_to_end(["run", "experiments", "--config", str(settings)], env)
    assert "0 dead letters" in done.stdout

    log = read_experiment_log(DataPaths(data_dir).experiment_log)
    shown = [e for e in events if e.type == "impression"]
    for exp in ("fusion", "ctx"):
        rows = log[log.experiment == exp]
        want = sum(1 for e in shown if exp in e.arms)
        assert rows.impressions.sum() == want
        clicks = sum(
            1 for e in events if e.type == "click" and (e.user_id not in lost or exp == "ctx")
        )
        assert rows.clicks.sum() == clicks

    def cli(*args: str) -> str:
        out = subprocess.run(
            [str(CLI), "experiments", *args, "--config", str(settings)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        return " ".join(out.stdout.split())

    fusion = cli("report", "fusion", "--out", str(tmp_path / "fusion.png"))
    assert "SAMPLE RATIO MISMATCH" in fusion and "ctr" in fusion and "likes" in fusion
    assert (tmp_path / "fusion.png").stat().st_size > 10_000
    ctx = cli("report", "ctx")
    assert "sample ratio ok" in ctx and "MISMATCH" not in ctx
    assert (data_dir / "experiments" / "ctx-daily-lift.png").exists()
    plan = cli("plan", "--from", "ctx", "--mde", "0.1", "--users", "1000")
    assert "users per arm detect a +10.0% change" in plan and "the MDE is" in plan
