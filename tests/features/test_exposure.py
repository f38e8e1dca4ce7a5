"""Exposure Bloom filters on the real Redis: no false negatives, event-time retention, FP rate."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import mmh3
import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features.errors import ExposureError
from features.exposure import (
    ExposureConfig,
    ExposureFilter,
    ExposureWriter,
    bit_positions,
    hwm_key,
    layout_for,
    slice_prefix,
)
from features.redis_conn import Client, connect

DAY = 86_400_000
T0 = 20_000 * DAY  # a day boundary (2024-10-04)


@contextmanager
def namespace(client: redis.Redis) -> Iterator[str]:
    """A fresh key namespace, deleted afterwards."""
    ns = f"test-exp-{uuid.uuid4().hex[:10]}"
    try:
        yield ns
    finally:
        _delete_namespace(client, ns)


def _delete_namespace(client: Client, ns: str) -> None:
    """Delete every key of a namespace: `{ns}:meta`, `{ns}:hwm` and `ns:x:{user}:slice`."""
    for pattern in (f"{ns}:*", f"{{{ns}}}:*"):
        for key in list(client.scan_iter(match=pattern, count=1_000)):
            client.delete(key)


@pytest.fixture
def ns(redis_client: redis.Redis) -> Iterator[str]:
    with namespace(redis_client) as name:
        yield name


def test_sizing_meets_the_configured_rate_and_is_stored_for_readers(
    redis_client: redis.Redis, ns: str
) -> None:
    config = ExposureConfig(namespace=ns)
    layout = layout_for(config)
    assert layout.slices == 30 and layout.bits % 64 == 0
    assert layout.design_fp <= config.fp_rate
    # One filter per slice sized for a thirtieth of the load, at a thirtieth of the rate.
    assert 14 < layout.bits_per_item < 20
    ExposureWriter(redis_client, config).add_batch(["u"], ["n"], [T0])
    stored, hwm = ExposureFilter(redis_client, ns).describe()
    assert stored == layout and hwm == T0


def test_a_writer_with_other_sizing_is_refused(redis_client: redis.Redis, ns: str) -> None:
    ExposureWriter(redis_client, ExposureConfig(namespace=ns))
    ExposureWriter(redis_client, ExposureConfig(namespace=ns))  # same settings: fine
    with pytest.raises(ExposureError, match=r"new `exposure\.namespace`"):
        ExposureWriter(redis_client, ExposureConfig(namespace=ns, expected_items=9_000))


def test_reading_an_empty_namespace_or_with_decoded_responses_is_an_error(
    redis_url: str, redis_client: redis.Redis, ns: str
) -> None:
    with pytest.raises(ExposureError, match="run `streamrec run exposure`"):
        ExposureFilter(redis_client, ns).seen("u", ["n"])
    text = connect(redis_url, decode_responses=True)
    with pytest.raises(ExposureError, match="decode_responses=False"):
        ExposureFilter(text, ns)
    text.close()


def _impressions() -> st.SearchStrategy[list[tuple[int, int, int]]]:
    """(user, note, ts) triples; times cluster on slice boundaries over ~70 days."""
    day = st.integers(0, 70)
    within = st.one_of(st.sampled_from([0, 1, DAY - 1, DAY // 2]), st.integers(0, DAY - 1))
    ts = st.builds(lambda d, w: T0 + d * DAY + w, day, within)
    return st.lists(st.tuples(st.integers(0, 3), st.integers(0, 40), ts), min_size=1, max_size=60)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    events=_impressions(),
    cuts=st.lists(st.integers(0, 60), max_size=4),
    slices=st.sampled_from([1, 2, 7, 30]),
    tight=st.booleans(),
)
def test_no_false_negatives_and_old_exposures_are_forgotten(
    redis_client: redis.Redis,
    events: list[tuple[int, int, int]],
    cuts: list[int],
    slices: int,
    tight: bool,
) -> None:
    # Tight: one impression per slice of design load, so slices overflow into new segments.
    load = slices if tight else 20 * slices
    config = dict(retention_ms=slices * DAY, slice_ms=DAY, expected_items=load, keys_per_call=3)
    with namespace(redis_client) as ns:
        writer = ExposureWriter(redis_client, ExposureConfig(namespace=ns, **config))
        bounds = sorted({0, len(events), *(c for c in cuts if c < len(events))})
        for lo, hi in itertools.pairwise(bounds):
            part = events[lo:hi]  # arrival order: times out of order within and across batches
            users, notes = [f"u{u}" for u, _, _ in part], [f"n{n}" for _, n, _ in part]
            writer.add_batch(users, notes, [t for _, _, t in part])
        hwm = max(t for _, _, t in events)
        live_from = hwm // DAY - slices + 1
        bloom = ExposureFilter(redis_client, ns)
        assert bloom.describe()[1] == hwm
        newest: dict[tuple[int, int], int] = {}
        for u, n, t in events:
            newest[u, n] = max(newest.get((u, n), 0), t)
        for user in {u for u, _, _ in events}:
            pairs = sorted((n, t) for (u, n), t in newest.items() if u == user)
            got = bloom.seen(f"u{user}", [f"n{n}" for n, _ in pairs])
            alive = any(t // DAY >= live_from for _, t in pairs)
            for (note, t), was in zip(pairs, got, strict=True):
                if t // DAY >= live_from:
                    assert was, f"false negative: u{user} n{note} at {t} (hwm {hwm})"
                elif not tight or not alive:  # else false positives are likely by design
                    assert not was, f"u{user} n{note} at {t} outlived retention (hwm {hwm})"


def test_a_slice_past_its_design_load_grows_segments_instead_of_saturating(
    redis_client: redis.Redis,
) -> None:
    rates = {}
    for most in (1, 8):
        with namespace(redis_client) as ns:
            config = ExposureConfig(namespace=ns, max_segments=most)
            writer = ExposureWriter(redis_client, config)
            heavy = [f"s{i}" for i in range(4 * config.expected_items // config.slices)]
            for lo in range(0, len(heavy), 25):  # a binge day: 4x the design load, in requests
                chunk = heavy[lo : lo + 25]
                writer.add_batch(["u"] * len(chunk), chunk, [T0 + lo] * len(chunk))
            bloom = ExposureFilter(redis_client, ns)
            assert all(bloom.seen("u", heavy))
            width = layout_for(config).bits // 8
            segments = redis_client.strlen(f"{slice_prefix(ns, 'u')}{T0 // DAY}") // width
            assert segments == (most if most == 1 else 4)
            rates[most] = np.mean(bloom.seen("u", [f"never-{i}" for i in range(20_000)]))
    # One saturated filter reports a large share of candidates as seen; four segments stay
    # below the configured rate of a whole 30-slice query.
    assert rates[1] > 0.2
    assert rates[8] < 0.01


def test_retention_follows_the_event_time_clock_not_the_wall_clock(
    redis_client: redis.Redis, ns: str
) -> None:
    old = 900_000_000_000  # 1998-07-09: a replay of old data
    writer = ExposureWriter(redis_client, ExposureConfig(namespace=ns))
    bloom = ExposureFilter(redis_client, ns)
    writer.add_batch(["u"], ["n-old"], [old])
    # Written long "ago" in wall-clock terms, yet alive: its TTL counts from the event time.
    key = f"{slice_prefix(ns, 'u')}{old // DAY}"
    ttl = redis_client.pttl(key)
    end = (old // DAY + 30) * DAY
    assert end - old + 2 * DAY - 60_000 < ttl <= end - old + 2 * DAY
    assert bloom.seen("u", ["n-old"]) == [True]
    # The clock is the writers' high-water mark: move it with other users' impressions.
    writer.add_batch(["other"], ["x"], [end - 1])
    assert bloom.seen("u", ["n-old"]) == [True]  # the last millisecond of its 30th slice
    writer.add_batch(["other"], ["x"], [end])
    assert bloom.seen("u", ["n-old"]) == [False]
    assert int(redis_client.get(hwm_key(ns))) == end
    # An impression already outside the window on arrival is not written at all.
    assert writer.add_batch(["u"], ["n-late"], [old + 1]) == 0
    assert bloom.seen("u", ["n-late"]) == [False]


def test_false_positive_rate_at_the_design_load(redis_client: redis.Redis, ns: str) -> None:
    config = ExposureConfig(namespace=ns)
    writer = ExposureWriter(redis_client, config)
    bloom = ExposureFilter(redis_client, ns)
    per_slice = config.expected_items // config.slices
    rates = []
    for user in range(8):
        ts = T0 + np.repeat(np.arange(config.slices), per_slice) * DAY  # exactly the design load
        shown = [f"s{user}-{i}" for i in range(len(ts))]
        writer.add_batch([f"u{user}"] * len(ts), shown, ts)
        assert all(bloom.seen(f"u{user}", shown))
        never = [f"never-{user}-{i}" for i in range(25_000)]
        rates.append(np.mean(bloom.seen(f"u{user}", never)))
    measured = float(np.mean(rates))
    assert 0.5 * config.fp_rate < measured <= 1.25 * config.fp_rate, measured


def test_bit_positions_follow_the_documented_formula() -> None:
    bits, hashes = 1_728, 12
    ids = ["n1", "n2", "笔记", "x" * 256]
    pos = bit_positions(ids, bits, hashes)
    assert pos.shape == (4, 12) and pos.min() >= 0 and pos.max() < bits
    for note, row in zip(ids, pos, strict=True):  # pure-Python ints, as another reader would
        digest = mmh3.hash_bytes(note.encode())
        h1 = int.from_bytes(digest[:8], "little") % bits
        h2 = int.from_bytes(digest[8:], "little") % bits
        assert row.tolist() == [(h1 + i * h2 + (i**3 - i) // 6) % bits for i in range(hashes)]


def test_a_writer_recreates_its_layout_after_redis_lost_the_data(
    redis_client: redis.Redis, ns: str
) -> None:
    writer = ExposureWriter(redis_client, ExposureConfig(namespace=ns))
    writer.add_batch(["u1"], ["n1"], [10**12])
    _delete_namespace(redis_client, ns)  # Redis restarted empty
    writer.add_batch(["u1"], ["n2"], [10**12 + 1])  # the next write stores the layout again
    bloom = ExposureFilter(redis_client, ns)
    assert bloom.seen("u1", ["n2"]) == [True]  # readable again at once, no error
    assert bloom.describe()[1] == 10**12 + 1
    _delete_namespace(redis_client, ns)
    writer.add_batch([], [], [], as_of=10**12 + 5)  # a batch without impressions, too
    assert bloom.describe()[1] == 10**12 + 5
