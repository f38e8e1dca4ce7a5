"""Every job and command that talks to Redis, on a secured Redis (issue 17): the ACL user over
mutual TLS, given by REDIS_URL alone.

`run stats`, `run exposure`, `run samples` and `run itemcf` (`--until-end`, started together on
one small replayed topic) write through it; `features get`, `exposure check`, `candidates` and
`serve` (`/readyz`, `/recommend`) read what they wrote; `features rebuild --from kafka` restores
the rows after the project's keys are deleted. (`features get` with the `requirepass`
password and `infra status`: `test_secured_cli.py`; `learn full` and `learn online` use no Redis.)
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import yaml
from typer.testing import CliRunner

from features.client import FeatureClient
from features.neighbours import NeighbourStore
from features.redis_conn import connect
from features.windows import METRICS, TYPE_METRIC
from infra.cli import app
from infra.processes import free_port, stop
from streams.replay import replay
from streams.sources import ListSource
from streams.sources.synthetic import SyntheticConfig
from tests.learners.helpers import publish_trained
from tests.secured_redis import SecuredRedis
from tests.streams.helpers import create_topics, job_output, start_job, synthetic_events

JOBS = ("stats", "exposure", "samples", "itemcf")
COUNTS_30D = [f"{METRICS[i]}_30d" for i in TYPE_METRIC.values()]
"""The 30-day count of each event type: their sum counts every event of a user."""


def _cli(args: list[str], env: dict[str, str]) -> str:
    """`streamrec <args>` in this process (the jobs and `serve` run as processes of their own)."""
    done = CliRunner().invoke(app, args, env=env)
    assert done.exit_code == 0, done.output
    return done.output


def test_jobs_and_commands_work_on_redis_with_an_acl_user_over_mutual_tls(
    secured_redis: SecuredRedis, bootstrap: str, topic_name: str, tmp_path: Path
) -> None:
    url = secured_redis.tls_url
    project, ns = f"p{uuid.uuid4().hex[:8]}", f"x{uuid.uuid4().hex[:8]}"
    events = synthetic_events(SyntheticConfig(seed=5, users=40, notes=120), 3_000)
    samples = f"{topic_name}.samples"
    create_topics(bootstrap, topic_name, samples)
    replay(ListSource(events, 1_000), bootstrap, topic_name)
    topics = {"interactions": topic_name, "dlq": f"{topic_name}.dlq", "training_samples": samples}
    config = tmp_path / "settings.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {"topics": topics},
                "feast_project": project,
                "exposure": {"namespace": ns},
                "snapshots": {"root": str(tmp_path / "snapshots")},
            }
        )
    )
    env = {**os.environ, "STREAMREC_DATA_DIR": str(tmp_path), "KAFKA_BOOTSTRAP": bootstrap}
    env.update(REDIS_URL=url, COLUMNS="200")
    env.pop("STREAMREC_CONFIG", None)
    jobs = {
        name: start_job(["run", name, "--until-end", "--config", str(config)], env) for name in JOBS
    }
    publish_trained(tmp_path / "snapshots")  # for `candidates` and `serve`, while the jobs run
    for name, proc in jobs.items():
        out = job_output(proc, 300)
        assert proc.returncode == 0, f"run {name}: {out}"

    user, _ = Counter(e.user_id for e in events if e.type == "click").most_common(1)[0]
    reader = FeatureClient.from_url(url, project)
    row = reader.get("user", [user], COUNTS_30D)
    assert sum(row[f][0] for f in COUNTS_30D) == sum(e.user_id == user for e in events)  # stats
    history, _ = reader.history([user])
    clicks = {e.note_id for e in events if e.type == "click" and e.user_id == user}
    assert history[0] and set(history[0]) <= clicks  # samples: the user's click history
    reader.close()
    client = connect(url)
    assert NeighbourStore(client, project).as_of() == max(e.ts for e in events)  # itemcf
    client.close()

    got = _cli(["features", "get", "user", user, "--config", str(config)], env)
    assert re.search(rf"│ clicks .*│ +{row['clicks_30d'][0]:,} │\n", got), got  # 30d: the last
    shown = next(e.note_id for e in events if e.type == "impression" and e.user_id == user)
    got = _cli(["exposure", "check", user, shown, "never-shown", "--config", str(config)], env)
    assert re.search(rf"│ {shown} +│ yes", got) and re.search(r"│ never-shown +│ no", got), got
    got = _cli(["candidates", user, "--k", "5", "--config", str(config)], env)
    assert "two_tower" in got and "itemcf" in got, got
    _serve(config, env)

    client = connect(url)  # Redis lost the project's data: `features rebuild` restores it
    client.delete(*[k for k in client.scan_iter(count=1_000) if project.encode() in k])
    assert FeatureClient(client, project).get("user", [user], COUNTS_30D)["clicks_30d"] == [None]
    client.close()
    rebuild = start_job(["features", "rebuild", "--from", "kafka", "--config", str(config)], env)
    out = job_output(rebuild, 300)
    assert rebuild.returncode == 0, f"features rebuild: {out}"
    reader = FeatureClient.from_url(url, project)
    assert reader.get("user", [user], COUNTS_30D) == row
    reader.close()


def _serve(config: Path, env: dict[str, str]) -> None:
    """`streamrec serve` answers /readyz (its Redis probe) and /recommend."""
    port = free_port()
    proc = start_job(["serve", "--port", str(port), "--config", str(config)], env)
    try:
        deadline = time.monotonic() + 120
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            while True:  # polling the condition: the service answers its readiness probe
                assert proc.poll() is None, "serve exited"
                assert time.monotonic() < deadline, "serve did not become ready in 120 s"
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            r = http.get("/recommend", params={"user_id": "u1", "n": 5})
            assert r.status_code == 200, r.text
            assert len(r.json()["items"]) == 5
    finally:
        stop([proc], signal.SIGTERM, grace_s=30)
