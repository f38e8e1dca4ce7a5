"""Events carrying arms (schema v2), the experiments flow against a pandas oracle, and the
stats, exposure and joiner flows on events with and without arms."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from features.experiment_log import COUNTS, read_experiment_log
from features.experiments import assign, parse_experiments
from features.windows import COMPLETION_FRACTION, DAY
from streams.config import ExperimentFlowConfig, StatsConfig
from streams.errors import EventError
from streams.events import Event, decode_dead_letter, decode_event, encode_event
from streams.experiments import ExperimentLogSink, build_flow
from streams.exposure import build_flow as build_exposure_flow
from streams.sources.synthetic import SyntheticConfig
from tests.streams.helpers import VALID, raw_batches, synthetic_events
from tests.streams.helpers import run as run_joiner
from tests.streams.test_stats_flow import final_state
from tests.streams.test_stats_flow import run as run_stats

CONFIG = parse_experiments(
    {
        "layers": [
            {
                "name": "ranking",
                "holdback": [80, 100],
                "experiments": [
                    {"name": "fusion", "buckets": [0, 60], "arms": [{"name": "a"}, {"name": "b"}]}
                ],
            },
            {
                "name": "retrieval",
                "experiments": [
                    {"name": "ctx", "buckets": [0, 100], "arms": [{"name": "x"}, {"name": "y"}]}
                ],
            },
        ]
    }
)
WORLD = SyntheticConfig(seed=5, users=80, notes=300, request_gap_ms=700_000.0)


@pytest.fixture(scope="module")
def events() -> list[Event]:
    """Synthetic events over ~3 days; impressions carry their user's arms, actions none."""
    out = []
    for e in synthetic_events(WORLD, 5_000):
        if e.type == "impression":
            e = msgspec.structs.replace(e, arms=assign(CONFIG, e.user_id), v=2)
        out.append(e)
    assert out[-1].ts - out[0].ts > 2 * DAY
    return out


def test_arms_need_schema_version_2_and_old_events_are_unchanged() -> None:
    arms = {"fusion": "b", "holdback.ranking": "launched"}
    event = decode_event(msgspec.json.encode({**VALID, "arms": arms, "v": 2}))
    assert event.arms == arms and event.v == 2
    assert decode_event(encode_event(event)) == event
    old = decode_event(msgspec.json.encode(VALID))
    assert old.arms is None and old.v == 1
    assert b"arms" not in encode_event(old) and b'"v"' not in encode_event(old)
    for payload, reason, field in (
        ({**VALID, "arms": arms}, "bad_value", "v"),  # v1 has no arms
        ({**VALID, "arms": arms, "v": 3}, "unsupported_version", "v"),
        ({**VALID, "arms": {}, "v": 2}, "bad_value", "arms"),
        ({**VALID, "arms": {"fusion": "a b"}, "v": 2}, "bad_value", "arms"),
        ({**VALID, "arms": ["fusion"], "v": 2}, "wrong_type", "arms"),
    ):
        with pytest.raises(EventError) as err:
            decode_event(msgspec.json.encode(payload))
        assert (err.value.reason, err.value.field) == (reason, field), payload


def _oracle(events: list[Event]) -> pd.DataFrame:
    rows = []
    for e in events:
        if e.type not in ("impression", "click", "like", "play"):
            continue
        done = bool(e.duration_ms and (e.watch_ms or 0) >= COMPLETION_FRACTION * e.duration_ms)
        for exp, arm in assign(CONFIG, e.user_id).items():
            rows.append(
                {
                    "experiment": exp,
                    "arm": arm,
                    "day": e.ts // DAY,
                    "user_id": e.user_id,
                    "impressions": e.type == "impression",
                    "clicks": e.type == "click",
                    "likes": e.type == "like",
                    "plays": e.type == "play",
                    "watch_ms": (e.watch_ms or 0) if e.type == "play" else 0,
                    "completions": e.type == "play" and done,
                }
            )
    frame = pd.DataFrame(rows)
    keys = ["experiment", "arm", "day", "user_id"]
    out = frame.groupby(keys)[list(COUNTS)].sum().astype(np.int64).reset_index()
    return out.astype({"day": np.int32})


def test_flow_counts_every_arm_day_and_user_like_pandas(events, tmp_path: Path) -> None:
    dead: list = []
    flow = build_flow(
        TestingSource(raw_batches(events)),
        ExperimentLogSink(tmp_path),
        TestingSink(dead),
        ExperimentFlowConfig(allowed_lateness_ms=60_000, flush_interval_s=1e-3),
        recoverable=False,
    )
    run_main(flow)
    assert dead == []
    parts = list(tmp_path.glob("part-*.parquet"))
    got = read_experiment_log(tmp_path)
    want = _oracle(events)
    assert len(parts) > 1 and sum(len(pd.read_parquet(p)) for p in parts) > len(want)  # upserts
    pd.testing.assert_frame_equal(got, want)
    assert set(got.experiment) == {"fusion", "ctx", "holdback.ranking"}
    assert got.day.nunique() >= 3


def test_actions_count_for_the_arms_of_the_users_last_impression(tmp_path: Path) -> None:
    t = 1_767_225_600_000
    shown = Event("i1", t, "u1", "n1", "impression", arms={"fusion": "a"}, v=2)
    later = Event("i2", t + 10, "u1", "n2", "impression", arms={"fusion": "b"}, v=2)
    stray = Event("s0", t + 1, "u2", "n1", "click")  # no arms known for u2
    clicks = [Event(f"c{i}", t + 20 + i, "u1", "n2", "click") for i in range(3)]
    for inherit in (True, False):
        out, dead = tmp_path / str(inherit), []
        flow = build_flow(  # clicks[0] twice: the second is a duplicate
            TestingSource(raw_batches([shown, stray, later, *clicks, clicks[0]], partitions=1)),
            ExperimentLogSink(out),
            TestingSink(dead),
            ExperimentFlowConfig(inherit_arms=inherit),
            recoverable=False,
        )
        run_main(flow)
        got = read_experiment_log(out).set_index("arm")
        assert got.loc["a", "impressions"] == 1 and got.loc["a", "clicks"] == 0
        assert got.loc["b", "impressions"] == 1
        assert got.loc["b", "clicks"] == (3 if inherit else 0)
        assert set(got.user_id) == {"u1"}
        assert [decode_dead_letter(m.value).reason for m in dead] == ["duplicate"]


def test_stats_exposure_and_joiner_flows_accept_events_with_arms(events) -> None:
    plain = [msgspec.structs.replace(e, arms=None, v=1) for e in events]
    assert sum(e.arms is not None for e in events) > 1_000
    stats_with, dead_with = run_stats(events, StatsConfig(shards=2))
    stats_plain, dead_plain = run_stats(plain, StatsConfig(shards=2))
    assert dead_with == dead_plain == []
    for view in ("user_stats", "note_stats"):
        with_arms, as_of = final_state(stats_with, view)
        assert as_of == events[-1].ts and len(with_arms) > 20
        pd.testing.assert_frame_equal(with_arms, final_state(stats_plain, view)[0])

    def shown(evs: list[Event]) -> tuple[list, list]:
        out: list = []
        dead: list = []
        source = TestingSource(raw_batches(evs))
        flow = build_exposure_flow(source, TestingSink(out), TestingSink(dead))
        run_main(flow)
        return sorted((u, n) for i in out for u, n in zip(i.users, i.notes, strict=True)), dead

    exposure_with, exposure_plain = shown(events), shown(plain)
    assert exposure_with == exposure_plain and exposure_with[1] == []
    assert len(exposure_with[0]) == sum(e.type == "impression" for e in events)

    joined_with, joined_plain = run_joiner(events), run_joiner(plain)
    assert joined_with.dead == joined_plain.dead == []
    assert joined_with.samples == joined_plain.samples and len(joined_with.samples) > 1_000
