"""The columnar joiner against the per-event joiner of d10c0ad: every sample, counter, batch id
and dead letter the same on a fixture with late events, duplicates, actions in and out of the
window and several partitions; the batched point-in-time statistics equal the per-span
computation they replaced."""

from __future__ import annotations

import hashlib
import pickle
import random
from collections import Counter, deque

import msgspec
import msgspec.structs
import numpy as np
import pytest

from features.samples import STAT_FEATURES, Sample, SampleBatch
from features.windows import DAY, HOUR, MINUTE, TYPE_METRIC, WINDOWS
from streams.config import SamplesConfig
from streams.events import Event, decode_dead_letter
from streams.ingest import columns_of
from streams.kafka_io import RawBatch
from streams.samples import (
    COUNT_COLS,
    STEP_MS,
    NoteHalves,
    Part,
    Pending,
    ShardCore,
    UserLogic,
    UserState,
    event_arrays,
    point_in_time,
    release_order,
)
from streams.sources.synthetic import SyntheticConfig, SyntheticSource
from streams.tiles import TileStore, event_metrics
from tests.streams.helpers import WINDOW, raw_batches, run

# The digest of the per-event joiner's output (commit d10c0ad) on `_fixture()`, per setting of
# `test_samples_counts_and_batches_equal_the_per_event_joiners`: any change to a sample's field,
# a counter, a batch id or a dead letter changes it. The semantics themselves are tested against
# pandas in test_samples.py; this pins the rewrite to the code those tests passed on.
PER_EVENT_DIGESTS = {
    "2-shards": "a2514ce2f13ff3ca",
    "4-shards-small-batches": "31b806d56b020161",
    "2-workers": "a2514ce2f13ff3ca",
}
SETTINGS = {
    "2-shards": {"negative_keep_rate": 0.5},
    "4-shards-small-batches": {"shards": 4, "batch_size": 7, "negative_keep_rate": 0.3},
    "2-workers": {"workers": 2, "negative_keep_rate": 0.5},
}


def _fixture() -> list:
    """A synthetic world (3 partitions, batches of 50) plus: the same events re-sent later
    (duplicates), events behind the watermark (late), actions just inside and just outside
    their impression's window, and actions without impression (orphans)."""
    cfg = SyntheticConfig(seed=3, users=40, notes=120, request_gap_ms=600_000.0)
    world = [e for b in SyntheticSource(cfg, limit=4_000).batches() for e in b]
    rng = random.Random(5)
    impressions = [e for e in world if e.type == "impression"]
    extra = []
    for i, imp in enumerate(rng.sample(impressions, 60)):
        edge = imp.ts + WINDOW + (0 if i % 2 else 1)  # at the edge: attached; 1 ms after: late
        kind = ("click", "like", "play", "collect")[i % 4]
        more = {"watch_ms": 4_000 + i, "duration_ms": 9_000} if kind == "play" else {}
        extra.append(
            Event(
                f"edge{i}", edge, imp.user_id, imp.note_id, kind, request_id=imp.request_id, **more
            )
        )
        extra.append(Event(f"orphan{i}", imp.ts + 5, imp.user_id, "nobody", "click"))
    events = sorted(world + extra, key=lambda e: e.ts)
    batches = raw_batches(events)
    again = rng.sample(events, 200)  # a producer's retries, later in the stream
    late = [
        msgspec.structs.replace(e, event_id=f"late{i}", ts=e.ts - 3 * HOUR)
        for i, e in enumerate(rng.sample(events[len(events) // 2 :], 40))
    ]
    cut = len(batches) * 3 // 4
    tail = raw_batches(sorted(again + late, key=lambda e: e.ts))
    out, next_offset = [], {}
    for b in batches[:cut] + tail + batches[cut:]:  # offsets consecutive per partition
        first = next_offset.get(b.partition, 0)
        next_offset[b.partition] = first + len(b.values)
        out.append(
            RawBatch(
                b.topic, b.partition, b.keys, b.values, list(range(first, first + len(b.values)))
            )
        )
    return out


@pytest.fixture(scope="module")
def fixture() -> list:
    return _fixture()


def _digest(result) -> str:
    h = hashlib.sha256()
    for s in result.samples:  # sorted by sample id
        h.update(msgspec.json.encode(s))
    h.update(repr(sorted(result.counts.items())).encode())
    h.update(repr(result.batch_ids).encode())
    letters = sorted(
        (x.reason, x.offset, x.partition)
        for x in map(decode_dead_letter, (d.value for d in result.dead))
    )
    h.update(repr(letters).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_samples_counts_and_batches_equal_the_per_event_joiners(
    fixture: list, setting: str
) -> None:
    result = run(fixture, **SETTINGS[setting])
    counts = result.counts
    # The fixture exercises what it claims to.
    assert counts["duplicate"] > 0 and counts["late_action"] > 0 and counts["orphan_action"] > 0
    assert counts["attached"] > 0 and counts["kept_negative"] > 0 and result.dead
    assert _digest(result) == PER_EVENT_DIGESTS[setting]


def _per_span_point_in_time(store: TileStore, events: list[Event], ids: list[str]) -> np.ndarray:
    """The per-span computation of d10c0ad (the reference): the store's sums at each span's
    start plus a prefix sum over the span's earlier events, the events added span by span."""
    cols = columns_of(0, events)
    metrics = event_metrics(cols.kind, cols.watch, cols.duration)
    ts, imp = cols.ts, cols.kind == TYPE_METRIC["impression"]
    out = np.zeros((int(imp.sum()), len(STAT_FEATURES)), dtype=np.int64)
    span = ts // STEP_MS
    bounds = np.flatnonzero(np.r_[True, span[1:] != span[:-1], True])
    done, emptied = 0, []
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        emptied.append(store.advance(int(ts[lo])))
        rows = store.rows_for(ids[lo:hi])
        sel = np.flatnonzero(imp[lo:hi])
        if len(sel):
            counts = store.window_counts(rows[sel])
            base = np.concatenate([counts[w.name][:, COUNT_COLS] for w in WINDOWS], axis=1)
            key = rows * STEP_MS + (ts[lo:hi] - span[lo] * STEP_MS)
            order = np.argsort(key, kind="stable")
            cum = np.zeros((hi - lo + 1, len(COUNT_COLS)), dtype=np.int64)
            np.cumsum(metrics[lo:hi][order][:, COUNT_COLS], axis=0, out=cum[1:])
            first = np.searchsorted(key[order], rows[sel] * STEP_MS, side="left")
            before = np.searchsorted(key[order], key[sel], side="left")
            out[done : done + len(sel)] = base + np.tile(cum[before] - cum[first], len(WINDOWS))
            done += len(sel)
        store.add(rows, ts[lo:hi], metrics[lo:hi])
    store.release(np.concatenate(emptied))
    return out


def _held(store: TileStore) -> dict[str, list[list[int]]]:
    """Entity id -> its window sums, for the entities the store holds."""
    return {
        key: [store.sums[w.name][row].tolist() for w in WINDOWS] for key, row in store.index.items()
    }


def _release_order(e: Event) -> tuple[int, bool, str]:
    return e.ts, e.type != "impression", e.event_id


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_point_in_time_equals_the_per_span_computation(seed: int) -> None:
    """Releases of random sizes over days, with gaps longer than every window and several spans
    per release: the same counts and the same store (held entities, their sums)."""
    rng = random.Random(seed)
    kinds = ("impression", "impression", "click", "play", "like", "hide")
    t, events = 200 * DAY, []
    for i in range(3_000):
        t += rng.choice((0, 0, 1, 700, 20_000, 4 * MINUTE, 40 * MINUTE, 2 * HOUR, 3 * DAY))
        kind = rng.choice(kinds)
        more = {"watch_ms": rng.randrange(20_000), "duration_ms": 15_000} if kind == "play" else {}
        events.append(Event(f"e{i}", t, f"u{rng.randrange(12)}", "n", kind, **more))
    fast, slow = TileStore(capacity=4), TileStore(capacity=4)
    at = 0
    while at < len(events):
        size = rng.choice((1, 5, 40, 300))
        ready = sorted(events[at : at + size], key=_release_order)
        at += size
        ids = [e.user_id for e in ready]
        got = point_in_time(fast, event_arrays(ready), ids)
        want = _per_span_point_in_time(slow, ready, ids)
        np.testing.assert_array_equal(got, want)
        assert fast.clock == slow.clock
        assert _held(fast) == _held(slow)
    assert len(_held(fast)) > 0


def test_a_state_snapshotted_before_the_buffer_arrays_resumes() -> None:
    """A shard state pickled without the buffer's arrays (the per-event joiner's format) is read
    with them rebuilt from the buffered events, and its buffered impression still closes."""
    config = SamplesConfig(shards=1, batch_size=1, negative_keep_rate=1.0)
    logic = UserLogic(UserState(), config, [0], recoverable=True)
    imp = Event("i1", 200 * DAY, "u1", "n1", "impression", request_id="r")
    logic.on_item(Part("u0", 0, imp.ts, [imp]))  # held back by the allowed lateness
    state = logic.snapshot()
    assert state is not None and state.core.buffer == [imp]
    old = {k: v for k, v in state.core.__dict__.items() if k != "arrays"}
    core = pickle.loads(pickle.dumps(state.core))
    core.__dict__.clear()
    core.__setstate__(old)
    np.testing.assert_array_equal(core.arrays, event_arrays([imp]))
    state.core = core
    out, _ = UserLogic(state, config, [0], recoverable=True).on_eof()
    assert [s.sample_id for x in out if isinstance(x, SampleBatch) for s in x.samples] == ["i1"]


def test_a_state_snapshotted_with_pending_objects_resumes() -> None:
    """A user shard pickled with its open impressions as `Pending` objects (before
    `OpenImpressions`) resumes: their labels, play sums, statistics and history close into the
    same samples, and an action after the restart still joins by key."""
    k = len(STAT_FEATURES)
    imp = Event("i1", 200 * DAY, "u1", "n1", "impression", request_id="r", duration_ms=7_000)
    waiting = Event("i2", 200 * DAY + 5, "u1", "n2", "impression", position=2)
    stats = list(range(k))
    old = {
        "core": ShardCore(),
        "pending": {
            "i1": Pending(imp, stats, [7] * k, {"click": 1, "like": 1}, 7_500, 9_000, ["b", "a"]),
            "i2": Pending(waiting, [1] * k),
        },
        "by_key": {("u1", "n1", "r"): "i1", ("u1", "n2", ""): "i2"},
        "queue": deque(["i1", "i2"]),
        "early": {},
        "closed": {},
        "closed_order": deque(),
        "batch": [],
        "seq": 3,
        "counts": Counter(),
        "history": {"u1": ("a", "b")},
    }
    written = UserState()
    written.__dict__.clear()
    written.__dict__.update(old)
    state = pickle.loads(pickle.dumps(written))
    config = SamplesConfig(shards=1, batch_size=10, negative_keep_rate=1.0)
    logic = UserLogic(state, config, [0], recoverable=True)
    like = Event("l2", waiting.ts + 10, "u1", "n2", "like")
    logic.on_item(Part("u0", 0, like.ts, [like]))
    logic.on_item(NoteHalves(["i2"], [waiting.ts], np.full((1, k), 4, dtype=np.int64)))
    out, _ = logic.on_eof()
    batches = [x for x in out if isinstance(x, SampleBatch)]
    assert [b.batch_id for b in batches] == ["samples-u0-000000003"]
    labels = dict.fromkeys(("click", "like", "collect", "share", "comment", "follow"), 0)
    ids = {"user_id": "u1", "author_id": "", "category": "", "keep_rate": 1.0}
    assert batches[0].samples == [
        Sample(
            **ids,
            **{**labels, "click": 1, "like": 1},
            sample_id="i1",
            ts=imp.ts,
            note_id="n1",
            request_id="r",
            position=-1,
            watch_ms=7_500,
            duration_ms=9_000,
            completion=1,
            user_stats=stats,
            note_stats=[7] * k,
            item_duration_ms=7_000,
            history=["b", "a"],
        ),
        Sample(
            **ids,
            **{**labels, "like": 1},
            sample_id="i2",
            ts=waiting.ts,
            note_id="n2",
            request_id="",
            position=2,
            watch_ms=0,
            duration_ms=0,
            completion=0,
            user_stats=[1] * k,
            note_stats=[4] * k,
        ),
    ]


@pytest.mark.parametrize("seed", [1, 2])
def test_release_order_is_pythons_sort_of_ts_impressions_first_event_id(seed: int) -> None:
    """Ties of ts and kind broken by id, ids that are prefixes of others and, in the second
    seed, ids with NUL characters (which numpy's strings would drop at the end)."""
    rng = random.Random(seed)
    alphabet = "ab\x00" if seed == 2 else "abé"
    ids = list({"".join(rng.choices(alphabet, k=rng.randrange(1, 6))) for _ in range(400)})
    rng.shuffle(ids)
    ts = [rng.choice((5, 6, 7)) for _ in ids]
    later = [rng.random() < 0.5 for _ in ids]
    want = sorted(range(len(ids)), key=lambda j: (ts[j], later[j], ids[j]))
    got = release_order(np.array(ts), np.array(later), ids)
    assert got.tolist() == want


def test_ids_released_before_their_columns_are_forgotten_at_the_horizon() -> None:
    """A snapshot holding one (ts, id) pair per released event (before the columns) is read
    as one release; ids are forgotten from the oldest up to the first inside the horizon."""
    state = {**ShardCore().__dict__, "seen": {"a", "b", "c"}}
    state["recent"] = deque([(5, "a"), (9, "b"), (7, "c")])
    core = ShardCore.__new__(ShardCore)
    core.__setstate__(state)
    logic = UserLogic(UserState(core=core), SamplesConfig(), [0], recoverable=False)
    logic._forget(8)
    assert core.seen == {"b", "c"}  # c is older than 8 but released after b
    logic._forget(10)
    assert core.seen == set() and not core.recent
