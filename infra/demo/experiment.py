"""The demo's A/B experiment: fusion weights, judged by the synthetic users' simulated clicks.

Serving runs the experiment `demo-fusion` (all users, half of them ranked by the click
prediction alone, half by the configured multi-task fusion). Every answer of the demo's
background client is shown to its user: `Responder` logs its notes as impressions carrying the
answer's arms and draws the user's clicks and plays from the synthetic world's own model
(`streams.sources.synthetic`: affinity of the user's interests to the note's category, the
note's quality, the position; likes as the world's). The experiments job counts only events with
arms (the synthetic stream shares the topic), and the demo ends with `streamrec experiments
report demo-fusion`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import yaml

from features.experiment_log import read_experiment_log
from streams.events import Event, encode_event
from streams.sources.synthetic import SyntheticSource

EXPERIMENT = "demo-fusion"
CLICK_ONLY = {
    t: 0.0 for t in ("like", "collect", "share", "comment", "follow", "completion", "watch")
}
EXPERIMENTS = {
    "buckets": 100,
    "layers": [
        {
            "name": "fusion",
            "experiments": [
                {
                    "name": EXPERIMENT,
                    "description": "rank by the click prediction alone vs the multi-task fusion",
                    "buckets": [0, 100],
                    "arms": [
                        {"name": "fused"},
                        {
                            "name": "click-only",
                            "overrides": {"fusion": {"weights": {"click": 1.0, **CLICK_ONLY}}},
                        },
                    ],
                }
            ],
        }
    ],
}


def write_experiments(run_dir: Path) -> Path:
    """Write the demo's experiments file into the run directory; return its path."""
    path = run_dir / "experiments.yaml"
    path.write_text(yaml.safe_dump(EXPERIMENTS, sort_keys=False))
    return path


def settings(path: Path) -> dict:
    """The demo settings that run the experiment (serving reads the file; the job counts only
    events with arms and writes every 2 s)."""
    return {
        "serving": {"experiments": str(path)},
        "experiments": {"flush_interval_s": 2.0, "inherit_arms": False},
    }


class Responder:
    """Shows `/recommend` answers to the synthetic users: impressions with the answer's arms,
    clicks and plays from the world's click model."""

    def __init__(self, source: SyntheticSource, producer, topic: str, seed: int) -> None:
        self.source, self.producer, self.topic = source, producer, topic
        self.rng = np.random.default_rng(seed + 99)
        self.requests = 0

    def show(self, answer: dict | None, now_ms: int) -> None:
        """Log the answer's notes as seen by its user (nothing for a failed call)."""
        if not answer or not answer.get("arms"):
            return
        src, c = self.source, self.source.config
        user = answer["user_id"]
        u = int(user[1:])
        arms = answer["arms"]
        request = f"demo-ab-{self.requests}"
        self.requests += 1
        events = []
        for pos, item in enumerate(answer["items"]):
            note = item["note_id"]
            if not (note.startswith("n") and note[1:].isdigit()):
                continue  # a probe's brand-new note: not in the world
            j = int(note[1:])
            affinity = np.log(src.interest[u, src.note_category[j]] * c.categories + 0.05)
            logit = c.click_bias + 0.8 * affinity + src.note_quality[j] - c.position_decay * pos
            common = {"user_id": user, "note_id": note, "arms": arms, "v": 2}
            t = now_ms + pos
            events.append(
                Event(f"{request}:{pos}", t, type="impression", request_id=request,
                      position=pos, **common)
            )  # fmt: skip
            if self.rng.random() < 1.0 / (1.0 + np.exp(-logit)):
                duration = int(src.note_duration[j])
                z = 0.8 * affinity + src.note_quality[j] + self.rng.normal()
                watch = int(duration / (1.0 + np.exp(-z)))
                events.append(Event(f"{request}:{pos}:c", t + 1, type="click", **common))
                events.append(
                    Event(f"{request}:{pos}:p", t + 2, type="play", watch_ms=watch,
                          duration_ms=duration, **common)
                )  # fmt: skip
                engage = 1.0 / (1.0 + np.exp(-(affinity + src.note_quality[j] - 1.5)))
                if self.rng.random() < 0.6 * engage:  # as the world's likes
                    events.append(Event(f"{request}:{pos}:l", t + 3, type="like", **common))
        for e in events:
            self.producer.produce(self.topic, encode_event(e), e.user_id.encode())
        self.producer.poll(0)


def report(responder: Responder, jobs, conf: list[str], run, timeout: float) -> str:
    """Wait for the experiments job to log the experiment, then run its report; its output.

    Args:
        responder: what showed the answers (its last events are flushed first).
        jobs: the demo's `ProcessGroup` (the experiments job runs in it).
        conf: the `--config` arguments of the run.
        run: the run's settings.
        timeout: longest wait for the log.
    """
    responder.producer.flush(30)
    deadline = time.monotonic() + timeout
    log = run.paths.experiment_log
    while read_experiment_log(log, EXPERIMENT).arm.nunique() < 2:
        jobs.check()
        if time.monotonic() > deadline:
            return f"experiment {EXPERIMENT}: no rows of both arms in {log} after {timeout:.0f} s"
        time.sleep(1.0)
    time.sleep(3.0)  # one more flush of the job (every 2 s) for the last answers
    cli = [str(Path(sys.executable).with_name("streamrec")), "experiments", "report"]
    return jobs.run("experiments-report", [*cli, EXPERIMENT, *conf], timeout)
