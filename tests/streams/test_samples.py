"""The sample joiner on hand-built event sequences: labels, windows, orphans, duplicates,
point-in-time statistics against pandas, down-sampling, and 1 vs 2 workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.samples import STAT_FEATURES, Sample, SampleBatch, read_sample_log
from features.schema import COUNTS
from features.windows import DAY, HOUR, MINUTE, WINDOWS
from streams.config import SamplesConfig
from streams.events import Event, decode_dead_letter, encode_event
from streams.kafka_io import RawBatch
from streams.reference import events_frame, expected_history, reference_counts
from streams.samples import (
    JoinReport,
    NoteHalves,
    Part,
    UserLogic,
    UserState,
    keep_draw,
)
from streams.sources.synthetic import SyntheticConfig, SyntheticSource
from tests.streams.helpers import WINDOW, Result, raw_batches, run

T0 = 200 * DAY


_N = iter(range(10**9))


def ev(kind: str, ts: int, user: str = "u1", note: str = "n1", req: str = "r1", **kw) -> Event:
    if kind == "play":
        kw.setdefault("watch_ms", 9_000)
        kw.setdefault("duration_ms", 10_000)
    return Event(f"e{next(_N)}", ts, user, note, kind, request_id=req, **kw)


def by_id(result: Result) -> dict[str, Sample]:
    return {s.sample_id: s for s in result.samples}


def test_labels_of_actions_within_the_window() -> None:
    imp = ev("impression", T0, author_id="a1", category="c1", position=3)
    other = ev("impression", T0 + 10, note="n2")
    events = [
        imp,
        other,
        ev("click", T0 + 1_000),
        ev("play", T0 + 2_000, watch_ms=5_000, duration_ms=10_000),
        ev("play", T0 + 9_000, watch_ms=4_000, duration_ms=10_000),
        ev("like", T0 + 10_000),
        ev("follow", T0 + 11_000),
        ev("hide", T0 + 12_000, note="n2"),
        ev("impression", T0 + 3 * HOUR, user="u2"),  # moves the watermark past both windows
    ]
    result = run(events)
    got = by_id(result)
    s = got[imp.event_id]
    assert (s.click, s.like, s.collect, s.share, s.comment, s.follow) == (1, 1, 0, 0, 0, 1)
    assert (s.watch_ms, s.duration_ms, s.completion) == (9_000, 10_000, 1)
    assert (s.author_id, s.category, s.request_id, s.position) == ("a1", "c1", "r1", 3)
    assert s.keep_rate == 1.0 and s.ts == T0 and (s.user_id, s.note_id) == ("u1", "n1")
    n2 = got[other.event_id]
    assert (n2.click, n2.watch_ms, n2.completion, n2.position) == (0, 0, 0, -1)
    assert result.counts["attached"] == 6
    assert result.counts["samples"] == 3 == len(result.samples)
    assert result.counts["orphan_action"] == 0


def test_window_edge_action_at_ts_plus_window_counts_just_after_does_not() -> None:
    a = ev("impression", T0, note="na")
    b = ev("impression", T0, note="nb")
    events = [
        a,
        b,
        ev("like", T0 + WINDOW, note="na"),  # exactly at the edge: attached
        ev("like", T0 + WINDOW + 1, note="nb"),  # 1 ms after: late
        ev("impression", T0 + 5 * HOUR, user="u9"),
    ]
    result = run(events)
    got = by_id(result)
    assert got[a.event_id].like == 1
    assert got[b.event_id].like == 0
    assert result.counts["late_action"] == 1
    assert result.counts["attached"] == 1


def test_late_action_after_the_window_closed_is_counted_not_attached() -> None:
    imp = ev("impression", T0)
    events = [imp, ev("impression", T0 + HOUR, user="u2"), ev("click", T0 + HOUR + 1)]
    result = run(events)
    assert by_id(result)[imp.event_id].click == 0
    assert result.counts["late_action"] == 1


def test_action_without_impression_is_counted_and_invents_no_sample() -> None:
    imp = ev("impression", T0, note="n1")
    events = [
        imp,
        ev("click", T0 + 5, note="n7"),  # no impression of n7
        ev("like", T0 + 6, note="n1", req="other"),  # another request
        ev("click", T0 + 7, user="u5"),
    ]
    result = run(events)
    assert [s.sample_id for s in result.samples] == [imp.event_id]
    assert result.samples[0].click == 0 and result.samples[0].like == 0
    assert result.counts["orphan_action"] == 3
    assert result.counts["samples"] == 1


def test_duplicate_events_do_not_double_count() -> None:
    imp = ev("impression", T0)
    play = ev("play", T0 + 100, watch_ms=3_000, duration_ms=10_000)
    click = ev("click", T0 + 50)
    first = [imp, click, play]
    # The same events again (a producer retry), in later batches (offsets) of the same partition.
    batches = raw_batches(first) + raw_batches([imp, play, click], first_offset=len(first))
    result = run(batches)
    assert len(result.samples) == 1
    s = result.samples[0]
    assert (s.click, s.watch_ms, s.completion) == (1, 3_000, 0)
    assert result.counts["duplicate"] == 3
    assert result.counts["impressions"] == 1


def test_event_behind_the_partition_mark_goes_to_the_dlq() -> None:
    imp = ev("impression", T0)
    events = [imp, ev("impression", T0 + 10 * MINUTE, note="n2"), ev("click", T0 + 10)]
    result = run(events)
    letters = [decode_dead_letter(d.value) for d in result.dead]
    assert [(x.reason, x.field, x.flow) for x in letters] == [("late", "ts", "samples")]
    assert by_id(result)[imp.event_id].click == 0


def test_bad_input_goes_to_the_dlq_and_the_flow_keeps_going() -> None:
    good = [ev("impression", T0 + i, note=f"n{i}") for i in range(3)]
    batch = RawBatch(
        "t",
        0,
        [None] * 5,
        [
            encode_event(good[0]),
            b"{oops",
            encode_event(good[1]),
            b'{"ts":1}',
            encode_event(good[2]),
        ],
        list(range(5)),
    )
    result = run([batch])
    assert sorted(decode_dead_letter(d.value).reason for d in result.dead) == [
        "missing_field",
        "not_json",
    ]
    assert len(result.samples) == 3


@pytest.fixture(scope="module")
def world() -> list[Event]:
    cfg = SyntheticConfig(seed=3, users=40, notes=120, request_gap_ms=600_000.0)
    return [e for b in SyntheticSource(cfg, limit=5_000).batches() for e in b]


def _reference_stats(events: list[Event], key: str, sample_ids: list[str]) -> np.ndarray:
    """pandas: each impression's window counts over the events strictly before it."""
    frame = events_frame(events)
    frame["event_id"] = [e.event_id for e in events]
    rows = []
    for sid in sample_ids:
        imp = frame[frame.event_id == sid].iloc[0]
        before = frame[frame.ts < imp.ts]
        entity = imp[key]
        counts = reference_counts(before[before[key] == entity], key, int(imp.ts))
        if entity in counts.index:
            rows.append(counts.loc[entity, list(STAT_FEATURES)].to_numpy(dtype=np.int64))
        else:
            rows.append(np.zeros(len(STAT_FEATURES), dtype=np.int64))
    return np.stack(rows)


def test_point_in_time_stats_equal_pandas(world: list[Event]) -> None:
    span = world[-1].ts - world[0].ts
    assert span > 2 * DAY  # windows lose tiles along the way
    result = run(world, allowed_lateness_ms=0)
    assert result.counts["missing_note_stats"] == 0
    impressions = [e for e in world if e.type == "impression"]
    assert len(result.samples) == len(impressions)
    pick = result.samples[:: max(1, len(result.samples) // 60)]
    ids = [s.sample_id for s in pick]
    for key, attr in (("user_id", "user_stats"), ("note_id", "note_stats")):
        got = np.array([getattr(s, attr) for s in pick], dtype=np.int64)
        want = _reference_stats(world, key, ids)
        np.testing.assert_array_equal(got, want, err_msg=attr)
    user = np.array([s.user_stats for s in result.samples])
    imp_30d = STAT_FEATURES.index("impressions_30d")
    imp_1h = STAT_FEATURES.index("impressions_1h")
    assert user[:, imp_30d].max() > 0 and (user[:, imp_1h] < user[:, imp_30d]).any()
    assert len(STAT_FEATURES) == len(WINDOWS) * len(COUNTS)


def test_labels_on_synthetic_world_equal_a_pandas_join(world: list[Event]) -> None:
    result = run(world)
    assert len({e.event_id for e in world}) == len(world)  # events_frame drops no duplicate
    frame = events_frame(world).rename(columns={"user_id": "user", "note_id": "note"})
    frame["req"] = [e.request_id for e in world]
    imps = frame[frame.type == "impression"].sort_values(["ts", "event_id"])
    imps = imps.rename(columns={"ts": "imp_ts", "event_id": "sample_id"})[
        ["imp_ts", "user", "note", "req", "sample_id"]
    ]
    acts = frame[frame.type.isin(["click", "like"])].sort_values("ts")
    # Last touch: an action belongs to the latest impression of its (user, note, request).
    joined = pd.merge_asof(
        acts, imps, left_on="ts", right_on="imp_ts", by=["user", "note", "req"]
    ).dropna(subset=["sample_id"])
    joined = joined[joined.ts <= joined.imp_ts + WINDOW]
    got = by_id(result)
    assert len(got) == len(imps)
    for kind in ("click", "like"):
        want = set(joined[joined.type == kind].sample_id)
        assert {sid for sid, s in got.items() if getattr(s, kind)} == want
        assert want


def test_negative_down_sampling_rate_and_determinism(world: list[Event]) -> None:
    a = 0.3
    first = run(world, negative_keep_rate=a)
    again = run(world, negative_keep_rate=a, batch_size=7)
    assert [s.sample_id for s in first.samples] == [s.sample_id for s in again.samples]
    negatives = first.counts["kept_negative"] + first.counts["dropped_negative"]
    assert negatives > 1_000
    rate = first.counts["kept_negative"] / negatives
    assert abs(rate - a) < 4 * np.sqrt(a * (1 - a) / negatives)
    assert all(s.keep_rate == (1.0 if s.click else a) for s in first.samples)
    assert first.counts["kept_positive"] == sum(s.click for s in first.samples) > 0
    assert all(keep_draw(s.sample_id) < a for s in first.samples if not s.click)


def test_two_workers_give_the_same_samples_and_batches(world: list[Event]) -> None:
    one = run(world, negative_keep_rate=0.5, batch_size=64)
    two = run(world, workers=2, negative_keep_rate=0.5, batch_size=64)
    assert one.samples == two.samples
    assert one.counts == two.counts
    assert one.batch_ids == two.batch_ids


def test_parquet_log_holds_every_sample(world: list[Event], tmp_path: Path) -> None:
    result = run(world, log_dir=tmp_path, negative_keep_rate=0.5)
    table = read_sample_log(tmp_path)
    assert table.num_rows == len(result.samples)
    assert sorted(table.column("sample_id").to_pylist()) == [s.sample_id for s in result.samples]
    first = table.slice(0, 1).to_pylist()[0]
    assert first == {c: getattr(by_id(result)[first["sample_id"]], c) for c in first}
    assert not list(tmp_path.glob(".*"))  # nothing left aside


def test_window_closes_when_the_watermark_passes_and_waits_for_note_stats() -> None:
    config = SamplesConfig(
        shards=1, batch_size=1, allowed_lateness_ms=MINUTE, negative_keep_rate=1.0
    )
    logic = UserLogic(UserState(), config, [0], recoverable=False)
    imp = ev("impression", T0)
    out, _ = logic.on_item(Part("u0", 0, T0, [imp]))
    assert out == []
    # The watermark passes ts + window, but the note statistics have not arrived: it waits.
    later = T0 + WINDOW + MINUTE + 1
    out, _ = logic.on_item(Part("u0", 0, later, [ev("impression", later, note="n2")]))
    assert not [x for x in out if isinstance(x, SampleBatch)]
    stats = np.arange(len(STAT_FEATURES), dtype=np.int64)[None, :]
    out, _ = logic.on_item(NoteHalves([imp.event_id], [imp.ts], stats))
    batches = [x for x in out if isinstance(x, SampleBatch)]
    assert [s.sample_id for b in batches for s in b.samples] == [imp.event_id]
    assert batches[0].samples[0].note_stats == stats[0].tolist()
    assert batches[0].batch_id == "samples-u0-000000000"
    # The second impression's window is still open; end of input closes it.
    out, _ = logic.on_eof()
    assert [s.note_id for x in out if isinstance(x, SampleBatch) for s in x.samples] == ["n2"]
    report = next(x for x in out if isinstance(x, JoinReport))
    assert report.counts["missing_note_stats"] == 1


@pytest.mark.parametrize("length", [5, 20])
def test_history_is_the_users_last_clicks_before_the_impression(
    world: list[Event], length: int
) -> None:
    result = run(world, history_len=length)
    samples = result.samples
    frame = events_frame(world)
    imps = pd.DataFrame({"user_id": [s.user_id for s in samples], "ts": [s.ts for s in samples]})
    want = expected_history(frame, imps, length)
    assert [s.history for s in samples] == want
    assert max(len(h) for h in want) == length  # some users clicked more than `length` notes
    assert sum(1 for h in want if not h) > 0  # and some impressions come before any click
    assert all(len(set(h)) == len(h) for h in want)  # distinct notes


def test_history_ignores_a_click_at_the_impression_time_and_moves_a_repeat_to_the_front() -> None:
    events = [
        ev("impression", T0, note="a", req="r0"),
        ev("click", T0 + 1, note="a", req="r0"),
        ev("impression", T0 + 10, note="b", req="r1"),
        ev("click", T0 + 11, note="b", req="r1"),
        ev("impression", T0 + 20, note="a", req="r2"),
        ev("click", T0 + 20, note="a", req="r2"),  # same time as its impression: not yet history
        ev("impression", T0 + 30, note="c", req="r3"),
    ]
    got = {s.note_id + s.request_id: s.history for s in run(events).samples}
    assert got == {"ar0": [], "br1": ["a"], "ar2": ["b", "a"], "cr3": ["a", "b"]}


def test_no_history_when_history_len_is_0(world: list[Event]) -> None:
    assert all(s.history == [] for s in run(world, history_len=0).samples)
