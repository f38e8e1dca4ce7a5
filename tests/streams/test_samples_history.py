"""The joiner's click history, online: what it stores is what its samples carry, point in time."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pandas as pd
import pytest
import redis
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from features import FeatureClient
from features.samples import Sample, decode_batch
from features.windows import MINUTE
from streams.config import SamplesConfig
from streams.events import Event
from streams.reference import events_frame, expected_history
from streams.samples import HistorySink, HistoryUpdate, build_flow
from streams.sources.synthetic import SyntheticConfig, SyntheticSource
from tests.streams.helpers import PARTITIONS, raw_batches

LENGTH = 5


@pytest.fixture(scope="module")
def world() -> list[Event]:
    cfg = SyntheticConfig(seed=11, users=30, notes=80, request_gap_ms=600_000.0)
    return [e for b in SyntheticSource(cfg, limit=3_000).batches() for e in b]


def join(
    events: list[Event], history: object, workers: int = 1, history_len: int = LENGTH
) -> list[Sample]:
    """Run the joiner over `events` with `history` as its history sink; return the samples."""
    config = SamplesConfig(
        shards=2, negative_keep_rate=1.0, allowed_lateness_ms=MINUTE, history_len=history_len
    )
    messages: list = []
    flow = build_flow(
        TestingSource(raw_batches(events)),
        TestingSink(messages),
        TestingSink([]),
        TestingSink([]),
        TestingSink([]),
        config,
        range(PARTITIONS),
        recoverable=False,
        history=history,
    )
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return [s for m in messages for s in decode_batch(m.value).samples]


def entries(updates: Sequence[HistoryUpdate]) -> dict[str, list[tuple[int, list[str]]]]:
    """User -> its (ts, history) entries, in the order they were written."""
    out: dict[str, list[tuple[int, list[str]]]] = {}
    for x in updates:
        for u, h, t in zip(x.users, x.histories, x.ts, strict=True):
            out.setdefault(u, []).append((t, h))
    return out


def as_of(written: list[tuple[int, list[str]]], t: int) -> list[str]:
    """What a reader of the store finds once every entry older than `t` is written."""
    older = [h for ts, h in written if ts < t]
    return older[-1] if older else []


@pytest.mark.parametrize("workers", [1, 2])
def test_the_stored_history_before_an_impression_is_its_samples(
    world: list[Event], workers: int
) -> None:
    updates: list[HistoryUpdate] = []
    samples = join(world, TestingSink(updates), workers)
    by_user = entries(updates)
    assert sum(len(v) for v in by_user.values()) == sum(e.type == "click" for e in world)
    for written in by_user.values():  # per user, in event-time order
        assert [t for t, _ in written] == sorted(t for t, _ in written)
    with_history = [s for s in samples if s.history]
    assert len(with_history) > len(samples) // 2 and any(len(s.history) == LENGTH for s in samples)
    for s in samples:
        assert as_of(by_user.get(s.user_id, []), s.ts) == s.history, s.sample_id


def test_online_store_holds_the_joiners_final_state(
    world: list[Event], redis_url: str, redis_client: redis.Redis
) -> None:
    project = f"p{uuid.uuid4().hex[:8]}"
    join(world, HistorySink(redis_url, project))
    users = [*sorted({e.user_id for e in world}), "never-seen"]
    stored, stamps = FeatureClient(redis_client, project).history(users)

    frame = events_frame(world)
    end = max(e.ts for e in world) + 1
    after_all = pd.DataFrame({"user_id": users, "ts": [end] * len(users)})
    want = expected_history(frame, after_all, LENGTH)
    assert stored == want  # the pandas oracle of an impression after every event
    clicks = frame[frame.type == "click"].groupby("user_id").ts.max()
    assert stamps.tolist() == [int(clicks.get(u, -1)) for u in users]  # as of the last click
    assert sum(1 for h in stored if h) > 10 and stored[-1] == []
    assert FeatureClient(redis_client, project).as_of("history") == int(clicks.max())


def test_no_updates_without_a_history(world: list[Event]) -> None:
    updates: list[HistoryUpdate] = []
    samples = join(world[:600], TestingSink(updates), history_len=0)
    assert samples and updates == []
