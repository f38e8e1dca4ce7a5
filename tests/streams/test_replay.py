"""Replays into the real broker: exact counts per type, event-time order, determinism."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from infra.stack import ensure_topics
from streams.errors import SourceError
from streams.events import Event, decode_event, encode_event
from streams.kafka_io import read_to_end
from streams.replay import replay
from streams.sources.kuairand import KuaiRandSource
from streams.sources.movielens import MovieLensSource
from streams.sources.synthetic import SyntheticConfig, SyntheticSource


def _movielens_fixture(path: Path, rows: int = 3_000) -> Path:
    """A u.data-shaped file (user, item, rating, unix seconds; tab separated), shuffled times."""
    import numpy as np

    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {
            "user": rng.integers(1, 200, rows),
            "item": rng.integers(1, 500, rows),
            "rating": rng.integers(1, 6, rows),
            "ts": rng.integers(874_724_710, 893_286_638, rows),
        }
    )
    frame.to_csv(path, sep="\t", header=False, index=False)
    return path


def _read_back(bootstrap: str, topic: str) -> dict[int, list[Event]]:
    by_partition: dict[int, list[Event]] = defaultdict(list)
    for batch in read_to_end(bootstrap, topic):
        for record in batch:
            event = decode_event(record.value)
            assert record.key == event.user_id.encode()
            by_partition[record.partition].append(event)
    return by_partition


def _assert_time_ordered(by_partition: dict[int, list[Event]]) -> None:
    for events in by_partition.values():
        stamps = [e.ts for e in events]
        assert stamps == sorted(stamps)


def test_movielens_replay_counts_and_order(bootstrap: str, topic_name: str, tmp_path: Path) -> None:
    path = _movielens_fixture(tmp_path / "u.data")
    ratings = pd.read_csv(path, sep="\t", names=["user", "item", "rating", "ts"])
    ensure_topics(bootstrap, [topic_name], 4)
    report = replay(MovieLensSource(path), bootstrap, topic_name)
    expected = Counter(
        impression=len(ratings), click=len(ratings), like=int((ratings.rating >= 4).sum())
    )
    assert report.by_type == expected
    back = _read_back(bootstrap, topic_name)
    assert Counter(e.type for events in back.values() for e in events) == expected
    _assert_time_ordered(back)
    assert report.first_ts == ratings.ts.min() * 1000


KUAIRAND_ROWS = """user_id\tvideo_id\ttime_ms\tis_click\tis_follow\tis_comment\tis_forward\tplay_time_ms\tduration_ms\tlabel
7\t100\t3000\t1\t0\t1\t0\t5000\t10000\t1
7\t101\t1000\t0\t0\t0\t0\t0\t8000\t0
8\t100\t2000\t1\t1\t0\t1\t12000\t0\t1
9\t102\t2000\t0\t0\t0\t0\t300\t9000\t0
"""  # noqa: E501


def test_kuairand_fixture_replay(bootstrap: str, topic_name: str, tmp_path: Path) -> None:
    path = tmp_path / "log.tsv"
    path.write_text(KUAIRAND_ROWS)
    ensure_topics(bootstrap, [topic_name], 2)
    report = replay(KuaiRandSource(path), bootstrap, topic_name)
    # label 1 -> like, label 0 -> hide (no is_like column); play when play_time_ms > 0.
    expected = Counter(impression=4, click=2, play=3, like=2, hide=2, comment=1, follow=1, share=1)
    assert report.by_type == expected
    back = _read_back(bootstrap, topic_name)
    events = sorted((e for es in back.values() for e in es), key=lambda e: (e.ts, e.event_id))
    assert Counter(e.type for e in events) == expected
    _assert_time_ordered(back)
    plays = {e.note_id + e.user_id: e for e in events if e.type == "play"}
    assert plays["1008"].duration_ms is None  # duration 0 = unknown
    assert plays["1007"].watch_ms == 5000 and plays["1007"].duration_ms == 10000
    shown = {e.note_id + e.user_id: e.duration_ms for e in events if e.type == "impression"}
    assert shown == {"1007": 10000, "1017": 8000, "1008": None, "1029": 9000}  # unplayed too
    first = [e for e in events if e.user_id == "7"]
    assert first[0].note_id == "101"  # re-sorted by time_ms


def test_kuairand_with_is_like_column(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,video_id,time_ms,is_like,label\n1,2,10,1,0\n1,3,20,0,1\n")
    kinds = Counter(e.type for b in KuaiRandSource(path).batches() for e in b)
    assert kinds == Counter(impression=2, like=1)  # is_like wins over label; no hide


def test_kuairand_missing_column_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,time_ms\n1,10\n")
    with pytest.raises(SourceError, match="video_id"):
        list(KuaiRandSource(path).batches())


def test_synthetic_is_deterministic_ordered_and_writes_truth(tmp_path: Path) -> None:
    config = SyntheticConfig(seed=3, users=200, notes=500)
    first = [e for b in SyntheticSource(config, limit=20_000, block=512).batches() for e in b]
    second = [e for b in SyntheticSource(config, limit=20_000, block=512).batches() for e in b]
    assert first == second
    assert len(first) == 20_000
    assert len({e.event_id for e in first}) == len(first)
    assert [e.ts for e in first] == sorted(e.ts for e in first)
    kinds = Counter(e.type for e in first)
    assert set(kinds) >= {"impression", "click", "play", "like"}
    assert all(e.watch_ms is not None and e.duration_ms for e in first if e.type == "play")
    other = [
        e
        for b in SyntheticSource(config.model_copy(update={"seed": 4}), limit=100).batches()
        for e in b
    ]
    assert other != first[:100]
    source = SyntheticSource(config, limit=10)
    source.write_truth(tmp_path)
    users = pq.read_table(tmp_path / "users.parquet").to_pandas()
    notes = pq.read_table(tmp_path / "notes.parquet").to_pandas()
    assert len(users) == 200 and len(notes) == 500
    assert abs(sum(users.interest[0]) - 1.0) < 1e-5


def test_synthetic_fast_encoding_equals_msgspec() -> None:
    """The replay's column-wise encoding gives exactly `encode_event`'s bytes, keys and counts."""
    config = SyntheticConfig(seed=9, users=300, notes=700, categories=7, authors=40)
    events = [b for b in SyntheticSource(config, limit=30_000, block=700).batches()]
    fast = list(SyntheticSource(config, limit=30_000, block=700).encoded())
    assert len(fast) == len(events)
    for batch, encoded in zip(events, fast, strict=True):
        assert encoded.values == [encode_event(e) for e in batch]
        assert encoded.keys == [e.user_id.encode() for e in batch]
        assert encoded.counts == dict(Counter(e.type for e in batch))
        assert (encoded.first_ts, encoded.last_ts) == (batch[0].ts, batch[-1].ts)
    kinds = Counter(t for b in fast for t, n in b.counts.items() for _ in range(n))
    assert set(kinds) >= {"impression", "click", "play", "like", "hide"}


def test_synthetic_clicks_follow_interests() -> None:
    """Users click notes of the categories they are interested in far more often."""
    config = SyntheticConfig(seed=5, users=300, notes=2_000)
    source = SyntheticSource(config, limit=60_000)
    events = [e for b in source.batches() for e in b]
    shown, clicked = Counter(), Counter()
    for e in events:
        u, c = int(e.user_id[1:]), int(e.category[1:])
        top = source.interest[u].argmax() == c
        if e.type == "impression":
            shown[top] += 1
        elif e.type == "click":
            clicked[top] += 1
    assert clicked[True] / shown[True] > 2 * clicked[False] / shown[False]


def test_rate_limit_paces_the_replay(bootstrap: str, topic_name: str) -> None:
    ensure_topics(bootstrap, [topic_name], 1)
    source = SyntheticSource(SyntheticConfig(users=50, notes=100), limit=3_000)
    report = replay(source, bootstrap, topic_name, rate=10_000)
    assert report.events == 3_000
    assert report.seconds >= 0.29  # 3,000 events at 10,000/s cannot take less than 0.3 s
