"""The stats dataflow on controlled input: windows equal the pandas ground truth, late events."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from features.schema import ENTITY_KEY, FeatureConfig, derive
from features.windows import DAY, HOUR, METRICS, MINUTE, WINDOWS
from streams.config import StatsConfig
from streams.events import Event, decode_dead_letter, decode_event, encode_event
from streams.kafka_io import RawBatch
from streams.reference import (
    events_frame,
    expected_features,
    features_as_of,
    features_of,
    reference_counts,
    three_times,
)
from streams.sources.synthetic import SyntheticConfig, SyntheticSource
from streams.stats import ShardLogic, SharedGeneration, StatsFlush, build_flow


def raw_batches(events: list[Event], partitions: int = 3, size: int = 97) -> list[RawBatch]:
    """Spread events over partitions by user, as the replay's keyed producer does."""
    by_part: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(partitions)}
    for e in events:
        p = hash(e.user_id) % partitions
        by_part[p].append((len(by_part[p]), encode_event(e)))
    out = []
    for p, rows in by_part.items():
        for lo in range(0, len(rows), size):
            chunk = rows[lo : lo + size]
            first_ts = decode_event(chunk[0][1]).ts
            batch = RawBatch(
                "t", p, [None] * len(chunk), [v for _, v in chunk], [o for o, _ in chunk]
            )
            out.append((first_ts, p, batch))
    # Interleave partitions in time order of their first event, as a live consumer would.
    return [b for _, _, b in sorted(out, key=lambda x: x[:2])]


def final_state(flushes: list[StatsFlush], view: str) -> tuple[pd.DataFrame, int]:
    latest: dict[str, tuple[int, dict[str, int]]] = {}
    for f in flushes:
        if f.view != view:
            continue
        for i, entity in enumerate(f.ids):
            row = {
                f"{m}_{w}": int(f.counts[w][i, j]) for w in f.counts for j, m in enumerate(METRICS)
            }
            latest[entity] = (f.as_of_ms, row)
    as_of = {a for a, _ in latest.values()}
    frame = pd.DataFrame({k: v for k, (_, v) in latest.items()}).T.sort_index()
    return frame.astype(np.int64), max(as_of)


def run(
    events: list[Event], config: StatsConfig, partitions: list[int] | None = None
) -> tuple[list[StatsFlush], list]:
    flushes: list[StatsFlush] = []
    dead: list = []
    flow = build_flow(
        TestingSource(raw_batches(events)),
        TestingSink(flushes),
        TestingSink(dead),
        config,
        partitions=partitions,
    )
    run_main(flow)
    assert all(key.startswith(("u", "n")) for key, _ in flushes)
    return [flush for _, flush in flushes], dead


def test_synthetic_windows_match_pandas() -> None:
    cfg = SyntheticConfig(seed=11, users=60, notes=150, request_gap_ms=600_000.0)
    events = [e for b in SyntheticSource(cfg, limit=6_000).batches() for e in b]
    span = events[-1].ts - events[0].ts
    assert span > 2 * DAY  # long enough that every window has old tiles dropping out
    flushes, dead = run(events, StatsConfig(shards=3))
    assert dead == []
    frame = events_frame(events)
    for view, key in (("user_stats", "user_id"), ("note_stats", "note_id")):
        got, as_of = final_state(flushes, view)
        assert as_of == events[-1].ts
        want = reference_counts(frame, key, as_of)
        pd.testing.assert_frame_equal(got[want.columns].loc[want.index], want, check_names=False)
        assert want["impressions_30d"].sum() == (frame.type == "impression").sum()
        assert (want["impressions_1h"] < want["impressions_1d"]).any()


def ev(i: int, ts: int, user: str = "u1", note: str = "n1", kind: str = "impression") -> Event:
    extra = {"watch_ms": 9_000, "duration_ms": 10_000} if kind == "play" else {}
    return Event(f"e{i}", ts, user, note, kind, **extra)


def test_idle_key_is_refreshed_when_its_events_leave_the_window() -> None:
    t0 = 100 * DAY
    events = [
        ev(0, t0, user="idle"),
        ev(1, t0 + 1, kind="play", user="idle"),
        ev(2, t0 + 2 * HOUR, user="busy"),
    ]
    flushes, _ = run(events, StatsConfig(shards=2))
    got, as_of = final_state(flushes, "user_stats")
    assert as_of == t0 + 2 * HOUR
    # The idle user's events are 2 h old: gone from 1h, still in 1d, and it was rewritten.
    assert got.loc["idle", "impressions_1h"] == 0
    assert got.loc["idle", "impressions_1d"] == 1
    assert got.loc["idle", "completions_1d"] == 1 and got.loc["idle", "watch_ms_1d"] == 9_000
    assert got.loc["busy", "impressions_1h"] == 1


def test_late_events_go_to_the_dlq_and_are_not_counted() -> None:
    t0 = 50 * DAY
    events = [ev(0, t0), ev(1, t0 + 30 * MINUTE), ev(2, t0 + 25 * MINUTE),  # 5 min behind: on time
              ev(3, t0 + 1 * MINUTE)]  # fmt: skip  # 29 min behind: late
    flushes, dead = run(events, StatsConfig(shards=1, allowed_lateness_ms=10 * MINUTE))
    letters = [decode_dead_letter(d.value) for d in dead]
    assert [(x.reason, x.field) for x in letters] == [("late", "ts")]
    assert b'"event_id":"e3"' in letters[0].original
    got, _ = final_state(flushes, "user_stats")
    assert got.loc["u1", "impressions_1d"] == 3


def test_bad_events_go_to_dlq_and_the_flow_keeps_going() -> None:
    good = [ev(i, DAY + i) for i in range(5)]
    batch = RawBatch(
        "t",
        0,
        [None] * 7,
        [
            encode_event(good[0]),
            b"{oops",
            *map(encode_event, good[1:4]),
            b'{"ts": 1}',
            encode_event(good[4]),
        ],
        list(range(7)),
    )
    flushes, dead = [], []
    run_main(
        build_flow(
            TestingSource([batch]), TestingSink(flushes), TestingSink(dead), StatsConfig(shards=1)
        )
    )
    assert sorted(decode_dead_letter(d.value).reason for d in dead) == ["missing_field", "not_json"]
    got, _ = final_state([flush for _, flush in flushes], "user_stats")
    assert got.loc["u1", "impressions_1h"] == 5


def test_window_definitions() -> None:
    assert [(w.name, w.tiles) for w in WINDOWS] == [
        ("1h", 12),
        ("1d", 24),
        ("7d", 168),
        ("30d", 30),
    ]


def log_frame(flushes: list[StatsFlush], view: str) -> pd.DataFrame:
    """Every offline-log row of `view` the flow emitted: key, event_ts, created, features."""
    parts = []
    for f in flushes:
        if f.view != view or f.log is None:
            continue
        columns = derive(view, f.log.counts, FeatureConfig())
        frame = pd.DataFrame({k: np.asarray(v, dtype=np.float64) for k, v in columns.items()})
        frame.insert(0, "created", f.log.created_ms)
        frame.insert(0, "event_ts", f.log.ts)
        frame.insert(0, ENTITY_KEY[view], f.log.ids)
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


def point_in_time(log: pd.DataFrame, requests: pd.DataFrame, key: str) -> pd.DataFrame:
    """What a point-in-time join reads: per request, the entity's latest row with event_ts <=
    as_of (ties: the latest created); NaN without one."""
    rows = log.sort_values(["event_ts", "created"], kind="stable")
    rows = rows.drop_duplicates([key, "event_ts"], keep="last")
    req = requests.reset_index().sort_values("as_of", kind="stable")
    got = pd.merge_asof(
        req, rows, left_on="as_of", right_on="event_ts", by=key, direction="backward"
    )
    got = got.set_index("index").sort_index().drop(columns=[key, "as_of", "event_ts", "created"])
    got.index.name = None
    return got


def test_offline_log_is_point_in_time_correct() -> None:
    """A join of the log at 3 times per entity equals the pandas ground truth as of each time;
    one value per (entity, event_ts); the entities' last rows equal the online values."""
    cfg = SyntheticConfig(seed=3, users=40, notes=120, request_gap_ms=6_000_000.0)
    events = [e for b in SyntheticSource(cfg, limit=5_000).batches() for e in b]
    assert events[-1].ts - events[0].ts > 31 * DAY  # every window, the 30d one too, expires
    flushes, dead = run(events, StatsConfig(shards=3, flush_interval_ms=1), partitions=[0, 1, 2])
    assert dead == []
    frame = events_frame(events)
    for view, key in (("user_stats", "user_id"), ("note_stats", "note_id")):
        log = log_frame(flushes, view)
        values = log.drop(columns=["created"])
        same_time = values.duplicated([key, "event_ts"], keep=False)
        assert not values[same_time].duplicated(keep=False).ne(True).any(), "two values at one time"
        requests = three_times(frame, key, seed=len(view))
        got = point_in_time(log, requests, key)
        want = features_as_of(frame, view, requests)
        pd.testing.assert_frame_equal(got[want.columns], want, check_exact=False, rtol=1e-12)
        assert got.iloc[: len(requests) // 3].isna().all().all()  # before the first event
        # The oracle itself agrees with reference_counts at the end.
        end = want.iloc[2 * len(requests) // 3 :].set_index(requests[key].iloc[-len(want) // 3 :])
        expected = expected_features(events, view)
        pd.testing.assert_frame_equal(
            end.loc[expected.index], expected, check_names=False, check_dtype=False
        )
        # Materializing the latest row per entity gives the job's final online values.
        latest = log.sort_values(["event_ts", "created"], kind="stable").groupby(key).last()
        online, _ = final_state(flushes, view)
        final = features_of(view, online)
        pd.testing.assert_frame_equal(
            latest[final.columns].loc[final.index], final, check_names=False, check_dtype=False
        )


def test_offline_log_rows_follow_each_change() -> None:
    """An event, and each tile leaving a window, makes a row at exactly its time."""
    t0 = 100 * DAY + 7 * MINUTE
    flushes, _ = run([ev(0, t0), ev(1, t0 + 31 * DAY)], StatsConfig(shards=1), partitions=None)
    log = log_frame(flushes, "user_stats")
    times = (log.event_ts - t0).tolist()
    # The impression at t0: its 5-min tile leaves 1h at 100 d + 65 min, its hour 1d at 101 d,
    # 7d at 107 d, its day 30d at 130 d; then the second impression at t0 + 31 d.
    assert times == [
        0,
        58 * MINUTE,
        DAY - 7 * MINUTE,
        7 * DAY - 7 * MINUTE,
        30 * DAY - 7 * MINUTE,
        31 * DAY,
    ]
    assert log.impressions_30d.tolist() == [1, 1, 1, 1, 0, 1]
    assert log.impressions_1h.tolist() == [1, 0, 0, 0, 0, 1]


def test_impressions_carrying_the_items_duration_count_no_expected_completion() -> None:
    """KuaiRand impressions carry the video's duration (for the ranker); only plays may count
    towards completions and expected completions, as in `streams.reference`."""
    events = []
    for i in range(40):
        t = DAY + i * MINUTE
        note = f"n{i % 4}"
        events.append(Event(f"i{i}", t, f"u{i % 5}", note, "impression", duration_ms=20_000))
        if i % 3 == 0:
            watch = 18_000 if i % 2 else 4_000
            events.append(
                Event(f"p{i}", t + 1, f"u{i % 5}", note, "play", watch_ms=watch, duration_ms=20_000)
            )
    flushes, dead = run(events, StatsConfig(shards=2))
    assert dead == []
    frame = events_frame(events)
    for view, key in (("user_stats", "user_id"), ("note_stats", "note_id")):
        got, as_of = final_state(flushes, view)
        want = reference_counts(frame, key, as_of)
        pd.testing.assert_frame_equal(got[want.columns].loc[want.index], want, check_names=False)
        assert 0 < want["expected_completions_milli_1d"].sum() < 14 * 1_000


def test_offline_log_takes_only_final_chunks_and_equals_rereading_all(monkeypatch) -> None:
    """A flush takes out of the pending events only the chunks holding one the watermark made
    final; its rows equal those of re-reading every pending event at every flush (before)."""
    cfg = SyntheticConfig(seed=5, users=300, notes=900, request_gap_ms=600_000.0)
    events = [e for b in SyntheticSource(cfg, limit=4_000).batches() for e in b]
    config = StatsConfig(shards=2, flush_interval_ms=1)
    # All the partitions that hold events (the synthetic users' skew can leave one empty) hold
    # the watermark from the start, so no event reaches the log late and the rows do not
    # depend on when the flushes happen.
    parts = sorted({b.partition for b in raw_batches(events)})
    left: list[int] = []
    take = ShardLogic._take_pending

    def spied(self: ShardLogic, bound: int | None) -> tuple:
        out = take(self, bound)
        left.append(len(self.state.pending))
        return out

    monkeypatch.setattr(ShardLogic, "_take_pending", spied)
    fast, _ = run(events, config, parts)
    assert max(left) > 0  # chunks were left pending untouched
    monkeypatch.setattr(ShardLogic, "_take_pending", lambda self, _bound: take(self, None))
    every, _ = run(events, config, parts)
    for view, key in (("user_stats", "user_id"), ("note_stats", "note_id")):
        got, want = (
            log_frame(f, view).drop(columns="created").sort_values([key, "event_ts"])
            for f in (fast, every)
        )
        assert len(got) > len(events) // 4
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))


def test_shards_share_one_read_of_the_store_generation() -> None:
    """The shards of a process share one token, read by the first call and then by the thread
    (`refresh`); a failed read is raised once, and not remembered."""
    reads: list[str] = []
    answers = iter([OSError("redis down"), "a", OSError("redis away"), "b"])

    def read() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        reads.append(answer)
        return answer

    shared = SharedGeneration(read, max_age_s=3600)  # the thread does not read in this test
    with pytest.raises(OSError, match="redis down"):
        shared()
    assert [shared() for _ in range(16)] == ["a"] * 16
    assert reads == ["a"]
    shared.refresh()
    with pytest.raises(OSError, match="redis away"):
        shared()
    assert shared() == "a"
    shared.refresh()
    assert shared() == "b"
