"""The ingest step: no single record moves event time, duplicates count once, every refused
record reaches the DLQ with its bytes and origin, and the valid events' values stay exact."""

from __future__ import annotations

import zlib
from collections import Counter

import bytewax.operators as op
import msgspec
import numpy as np
import pandas as pd
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.windows import DAY, METRICS, MINUTE
from streams.config import EventLimits, StatsConfig
from streams.events import MAX_SPAN_MS, Event, decode_dead_letter, encode_event
from streams.ingest import ingest_flow
from streams.kafka_io import RawBatch
from streams.reference import events_frame, reference_counts
from streams.stats import StatsFlush, build_flow

T0 = 1_041_379_200_000  # 2003-01-01, a replay of old data
PARTITIONS = 2


def ev(i: int, ts: int, user: str = "u1", note: str = "n1", kind: str = "impression") -> Event:
    extra = {"watch_ms": 1_000, "duration_ms": 9_000} if kind == "play" else {}
    return Event(event_id=f"e{i}", ts=ts, user_id=user, note_id=note, type=kind, **extra)


def partition_of(user: str) -> int:
    return zlib.crc32(user.encode()) % PARTITIONS


def batches(payloads: list[tuple[str, bytes]], size: int = 50) -> list[RawBatch]:
    """(user, bytes) in produce order -> raw batches per partition, offsets from 0."""
    by_part: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in range(PARTITIONS)}
    for user, raw in payloads:
        by_part[partition_of(user)].append((user.encode(), raw))
    out = []
    for p, rows in by_part.items():
        for lo in range(0, len(rows), size):
            chunk = rows[lo : lo + size]
            offsets = list(range(lo, lo + len(chunk)))
            out.append(RawBatch("events", p, [k for k, _ in chunk], [v for _, v in chunk], offsets))
    return out


def run_stats(
    payloads: list[tuple[str, bytes]], limits: EventLimits
) -> tuple[list[StatsFlush], list]:
    flushes: list = []
    dead: list = []
    flow = build_flow(
        TestingSource(batches(payloads)),
        TestingSink(flushes),
        TestingSink(dead),
        StatsConfig(shards=2, allowed_lateness_ms=10 * MINUTE),
        recoverable=False,
        limits=limits,
    )
    run_main(flow)
    return [f for _, f in flushes], [decode_dead_letter(d.value) for d in dead]


def final_counts(flushes: list[StatsFlush], view: str) -> tuple[pd.DataFrame, int]:
    latest: dict[str, dict[str, int]] = {}
    as_of = 0
    for f in flushes:
        if f.view != view:
            continue
        as_of = max(as_of, f.as_of_ms)
        for i, entity in enumerate(f.ids):
            latest[entity] = {
                f"{m}_{w}": int(f.counts[w][i, j]) for w in f.counts for j, m in enumerate(METRICS)
            }
    return pd.DataFrame(latest).T.sort_index().astype(np.int64), as_of


def assert_exact(flushes: list[StatsFlush], valid: list[Event]) -> None:
    """The job's last values equal pandas over exactly the valid events, as of their last."""
    frame = events_frame(valid)
    for view, key in (("user_stats", "user_id"), ("note_stats", "note_id")):
        got, as_of = final_counts(flushes, view)
        assert as_of == max(e.ts for e in valid)
        want = reference_counts(frame, key, as_of)
        pd.testing.assert_frame_equal(got[want.columns].loc[want.index], want, check_names=False)


def stream(n: int, users: int = 6, notes: int = 9, step: int = 20_000) -> list[Event]:
    kinds = ("impression", "impression", "click", "play", "like")
    return [
        ev(i, T0 + i * step, f"u{i % users}", f"n{(i * 7) % notes}", kinds[i % len(kinds)])
        for i in range(n)
    ]


def payloads_of(events: list[Event]) -> list[tuple[str, bytes]]:
    return [(e.user_id, encode_event(e)) for e in events]


def test_a_future_event_is_refused_and_moves_no_clock() -> None:
    valid = stream(300)
    future = ev(10_000, 4_102_444_800_000, "u1")  # 2100-01-01: valid by the contract
    payloads = payloads_of(valid[:150]) + payloads_of([future]) + payloads_of(valid[150:])
    flushes, dead = run_stats(payloads, EventLimits())
    assert [(d.reason, d.field) for d in dead] == [("future", "ts")]
    assert dead[0].original == encode_event(future)
    assert (dead[0].source_topic, dead[0].partition) == ("events", partition_of("u1"))
    assert_exact(flushes, valid)


def test_one_outlier_in_the_past_cannot_zero_the_windows() -> None:
    valid = stream(600)
    outlier = ev(10_000, T0 + 17 * 365 * DAY, "u1")  # a 2020 event inside a 2003 replay
    payloads = payloads_of(valid[:100]) + payloads_of([outlier]) + payloads_of(valid[100:])
    limits = EventLimits(outlier_after=50)
    flushes, dead = run_stats(payloads, limits)
    assert [(d.reason, d.field) for d in dead] == [("outlier", "ts")]
    assert dead[0].original == encode_event(outlier)
    assert_exact(flushes, valid)
    # The fault is real: a clock that follows any single record loses every later real event.
    flushes, dead = run_stats(payloads, EventLimits(confirm_events=1))
    got, _ = final_counts(flushes, "user_stats")
    assert got["impressions_30d"].sum() == 1  # the outlier alone
    after = [e for e in valid[100:] if partition_of(e.user_id) == partition_of("u1")]
    assert Counter(d.reason for d in dead)["late"] == len(after)  # its partition's, all lost


def test_a_real_gap_in_traffic_moves_the_clock_once_confirmed() -> None:
    before = stream(200)
    after = [ev(1_000 + i, T0 + 5 * DAY + i * 1_000, f"u{i % 6}", f"n{i % 9}") for i in range(60)]
    flushes, dead = run_stats(payloads_of(before + after), EventLimits())
    assert dead == []
    assert_exact(flushes, before + after)


def test_duplicates_count_once() -> None:
    valid = stream(400)
    payloads = payloads_of(valid)
    # A producer retry resends every 10th event: once right away, once 30 events later.
    sent = [*payloads]
    for i in range(0, 400, 10):
        sent.insert(sent.index(payloads[i]) + (1 if i % 20 else 30), payloads[i])
    flushes, dead = run_stats(sent, EventLimits())
    assert Counter((d.reason, d.field) for d in dead) == {("duplicate", "event_id"): 40}
    assert_exact(flushes, valid)


def test_late_dead_letters_carry_the_bytes_produced_and_their_offset() -> None:
    valid = stream(200)
    late = ev(5_000, T0, "u1")
    produced = b'{ "event_id": "e5000", "ts": %d, "user_id": "u1", "note_id": "n1",  "type": '
    produced = produced % late.ts + b'"impression" }'
    payloads = [*payloads_of(valid), ("u1", produced)]
    flushes, dead = run_stats(payloads, EventLimits())
    assert [(d.reason, d.original) for d in dead] == [("late", produced)]
    users_on_partition = sum(partition_of(e.user_id) == partition_of("u1") for e in valid)
    assert (dead[0].partition, dead[0].offset) == (partition_of("u1"), users_on_partition)
    assert_exact(flushes, valid)


def test_a_partition_with_fewer_events_than_a_confirmation_keeps_them() -> None:
    events = [ev(1, T0, "u1"), ev(2, T0 + 1_000, "u1", kind="click")]
    flushes, dead = run_stats(payloads_of(events), EventLimits())
    assert dead == []
    assert_exact(flushes, events)


def test_a_record_that_makes_the_flow_raise_goes_to_the_dlq_and_the_rest_go_on() -> None:
    def shard(cols, hwm):
        if "boom" in cols.notes:
            raise ValueError("cannot shard note boom")
        return [("all", (hwm, list(cols.notes)))]

    out: list = []
    dead: list = []
    events = [ev(i, T0 + i, note="boom" if i == 3 else f"n{i}") for i in range(6)]
    source = TestingSource(batches(payloads_of(events)))
    flow, parts = ingest_flow(
        "t", source, TestingSink(dead), limits=EventLimits(), lateness_ms=None, shard=shard
    )
    op.output("out", parts, TestingSink(out))
    run_main(flow)
    letters = [decode_dead_letter(d.value) for d in dead]
    assert [(d.reason, d.original) for d in letters] == [("internal", encode_event(events[3]))]
    assert "cannot shard note boom" in letters[0].error
    assert [n for _, (_, notes) in out for n in notes] == [
        e.note_id for e in events if e.ts != T0 + 3
    ]


# -- many generated bad events -------------------------------------------------------------

VALID_FIELDS = {"event_id": "x", "ts": T0, "user_id": "u1", "note_id": "n1", "type": "click"}


def with_fields(reason: str, **fields: object) -> tuple[str, bytes]:
    return reason, msgspec.json.encode({**VALID_FIELDS, **fields})


def without(field: str) -> tuple[str, bytes]:
    return "missing_field", msgspec.json.encode(
        {k: v for k, v in VALID_FIELDS.items() if k != field}
    )


bad_payload = st.one_of(
    st.binary(max_size=12).map(lambda b: ("not_json", b"\xff" + b)),
    st.sampled_from(["ts", "user_id", "type", "note_id"]).map(
        lambda f: with_fields("wrong_type", **{f: [1]})
    ),
    st.integers(MAX_SPAN_MS + 1, 2**63 - 1).map(
        lambda w: with_fields("bad_value", type="play", watch_ms=w)
    ),
    st.integers(-(2**63), -1).map(lambda t: with_fields("bad_value", ts=t)),
    st.sampled_from(["type", "user_id", "ts"]).map(without),
    st.just(with_fields("oversized", category="c" * 20_000)),
    st.integers(0, 10**6).map(lambda k: ("future", 4_102_444_800_000 + k)),
    st.just(("outlier", None)),
    st.just(("duplicate", None)),
    st.just(("late", None)),
)  # fmt: skip


@settings(
    max_examples=40,  # x at least 260 bad events each: >= 10,400 bad events per run
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.large_base_example,
        HealthCheck.data_too_large,
    ],
)
@given(st.lists(bad_payload, min_size=260, max_size=300), st.randoms(use_true_random=False))
def test_thousands_of_bad_events_each_reach_the_dlq_and_valid_values_stay_exact(
    bad: list[tuple[str, object]], rng
) -> None:
    valid = stream(600, users=12, notes=20, step=5_000)
    clean = payloads_of(valid)
    mixed = clean[:200]
    sent = list(mixed)  # the valid payloads produced so far (duplicates resend recent ones)
    rest = clean[200:]
    expected: Counter = Counter()
    outliers = 0
    for n, (reason, payload) in enumerate(bad):
        user = f"u{n % 12}"
        if reason == "future":
            raw = encode_event(ev(100_000 + n, payload, user))
        elif reason == "outlier":  # days apart: no two can confirm each other
            raw = encode_event(ev(100_000 + n, T0 + 10 * 365 * DAY + 2 * outliers * DAY, user))
            outliers += 1
        elif reason == "duplicate":  # within the lateness: a duplicate, not a late event
            user, raw = sent[-1 - rng.randrange(min(50, len(sent)))]
        elif reason == "late":
            raw = encode_event(ev(100_000 + n, T0 - DAY, user))
        else:
            raw = payload
        expected[reason] += 1
        mixed.append((user, raw))
        if rest and rng.random() < 0.5:
            sent.append(rest.pop(0))
            mixed.append(sent[-1])
    mixed += rest
    flushes, dead = run_stats(mixed, EventLimits(outlier_after=100))
    assert Counter(d.reason for d in dead) == expected
    assert all(d.source_topic == "events" and d.offset is not None for d in dead)
    assert_exact(flushes, valid)


def test_a_recovered_state_ahead_of_its_input_stops_the_flow_naming_the_fix() -> None:
    """The partition's state has taken offsets 0..99; a resumed input that gives offset 50
    again must not be dropped as late or duplicate (counted nowhere) but stop the job."""
    from streams.errors import RecoveryStateError
    from streams.ingest import IngestLogic, PartitionClock

    def logic(state: PartitionClock) -> IngestLogic:
        return IngestLogic(
            state,
            "stats",
            EventLimits(),
            10 * MINUTE,
            lambda cols, _hwm: [("all", len(cols.events))],
            dedupe=True,
            recoverable=True,
            reset_hint="streamrec run stats --reset earliest --recovery-dir /r",
        )

    def batch(lo: int, hi: int) -> RawBatch:
        rows = [encode_event(ev(i, T0 + i)) for i in range(lo, hi)]
        return RawBatch("events", 3, [None] * len(rows), rows, list(range(lo, hi)))

    first = logic(PartitionClock())
    first.on_item(batch(0, 100))
    saved = first.snapshot()
    assert saved is not None and saved.next_offset == 100
    resumed = logic(saved)
    with pytest.raises(RecoveryStateError, match=r"events\[3\].*offset 99.*offset 50") as err:
        resumed.on_item(batch(50, 150))
    assert "streamrec run stats --reset earliest --recovery-dir /r" in str(err.value)
    out, _ = logic(PartitionClock()).on_item(batch(0, 100))  # a fresh state takes any offsets
    assert out[0].parts == [("all", 100)] and not out[0].dead
    (ok,), _ = resumed.on_item(batch(100, 120))  # the input where the state left off
    assert ok.parts == [("all", 20)] and not ok.dead
