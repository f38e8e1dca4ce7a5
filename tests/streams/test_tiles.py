"""Tile stores: exact windows, memory and snapshots that follow activity, idle entities dropped."""

from __future__ import annotations

import copy
import gzip
import pickle
from pathlib import Path

import numpy as np

from features.windows import DAY, HOUR, METRICS, MINUTE, WINDOWS
from streams.tiles import TileStore

T0 = 1_041_379_200_000
RINGS = Path(__file__).parent / "data" / "tiles_rings.pkl.gz"
"""A store written by the dense rings (before the sparse tiles): its snapshot in both forms
the recovery store held then, and its window counts."""


def events(entities: int, n: int, seed: int = 0, span: int = 40 * DAY) -> tuple:
    rng = np.random.default_rng(seed)
    ts = np.sort(T0 + rng.integers(0, span, size=n))
    ids = [f"u{i}" for i in rng.integers(0, entities, size=n)]
    return ts, ids, rng.integers(0, 3, size=(n, len(METRICS)))


def fill(store: TileStore, ts: np.ndarray, ids: list[str], metrics: np.ndarray, batch: int) -> None:
    for lo in range(0, len(ts), batch):
        store.advance(int(ts[lo : lo + batch].max()))
        rows = store.rows_for(ids[lo : lo + batch])
        store.add(rows, ts[lo : lo + batch], metrics[lo : lo + batch])


def filled(entities: int, n: int, seed: int = 0, span: int = 40 * DAY) -> TileStore:
    store = TileStore()
    fill(store, *events(entities, n, seed, span), batch=500)
    return store


def by_id(store: TileStore) -> dict[str, np.ndarray]:
    """Entity id -> its (windows x metrics) counts."""
    rows = store.live_rows()
    counts = store.window_counts(rows)
    stacked = np.stack([counts[w.name] for w in WINDOWS], axis=1)  # (E, W, M)
    return {store.ids[r]: stacked[i] for i, r in enumerate(rows.tolist())}


def same(a: TileStore, b: TileStore) -> bool:
    ca, cb = by_id(a), by_id(b)
    return (
        a.clock == b.clock
        and ca.keys() == cb.keys()
        and all(np.array_equal(ca[k], cb[k]) for k in ca)
        and a.index == b.index
    )


def brute_force(ts: np.ndarray, ids: list[str], metrics: np.ndarray, clock: int) -> dict:
    """Entity id -> (windows x metrics) sums of its events' tiles inside each window at `clock`
    (events added in time order, so an event is in a window iff its tile is)."""
    out: dict[str, np.ndarray] = {}
    for j, w in enumerate(WINDOWS):
        inside = ts // w.hop_ms > clock // w.hop_ms - w.tiles
        for i in np.flatnonzero(inside).tolist():
            out.setdefault(ids[i], np.zeros((len(WINDOWS), len(METRICS)), np.int64))
            out[ids[i]][j] += metrics[i]
    return {k: v for k, v in out.items() if v.any()}


def test_windows_equal_a_brute_force_sum_and_idle_entities_are_dropped() -> None:
    ts, _, metrics = events(entities=1, n=6_000, span=90 * DAY)
    rng = np.random.default_rng(3)
    cohort = (ts - T0) // (10 * DAY)  # each 10 days, mostly new entities
    ids = [f"u{c * 40 + r}" for c, r in zip(cohort, rng.integers(0, 60, len(ts)), strict=True)]
    store, released = TileStore(), 0
    for lo in range(0, len(ts), 300):
        store.advance(int(ts[lo : lo + 300].max()))
        rows = store.rows_for(ids[lo : lo + 300])
        store.add(rows, ts[lo : lo + 300], metrics[lo : lo + 300])
        released += len(store.release(np.arange(len(store.ids))))  # all windows zero
        want = brute_force(ts[: lo + 300], ids[: lo + 300], metrics[: lo + 300], store.clock)
        got = by_id(store)
        assert got.keys() == want.keys()  # held exactly while some window is non-zero
        assert all(np.array_equal(got[k], want[k]) for k in want)
    assert released > 0 and len(store.ids) < len(set(ids))  # released rows were reused
    store.advance(int(ts[-1]) + 31 * DAY)
    assert len(store.release(store.live_rows())) > 0 and len(store) == 0
    assert not any(store.tiles.values())  # nothing of a dropped entity remains


def test_memory_follows_activity_not_the_entities_ever_seen() -> None:
    """Entities with one event each cost their row of sums and one entry per hop; after an
    hour their fine tile is gone, after a day their hourly one; released, nothing."""
    per_entity = {}
    for entities in (1_000, 8_000):
        store = TileStore()
        ts = T0 + np.arange(entities) * 10  # one event each, within 2 minutes
        ids = [f"e{i}" for i in range(entities)]
        fill(store, ts, ids, np.ones((entities, len(METRICS)), np.int64), batch=1_000)
        parts = store.nbytes()
        per_entity[entities] = (parts["tiles"] + parts["sums"]) / entities
        entries = sum(len(t) for ts_ in store.tiles.values() for t in ts_.values())
        assert entries == 3 * entities  # one 5 min, one 1 h, one 1 d tile each
        assert parts["tiles"] <= 3 * entities * (4 + 4 * len(METRICS))  # int32 rows and sums
        store.advance(int(ts[-1]) + 2 * HOUR)
        assert sum(len(t) for ts_ in store.tiles.values() for t in ts_.values()) == 2 * entities
        store.advance(int(ts[-1]) + 31 * DAY)
        store.release(store.live_rows())
        assert len(store) == 0 and not any(store.tiles.values())
    assert max(per_entity.values()) < 1_200  # sums grow by 1.25x: at most a quarter unused


def test_large_sums_stay_exact_in_int64_tiles() -> None:
    store = TileStore()
    store.advance(T0)
    big = np.full((3, len(METRICS)), 2**31 - 10, dtype=np.int64)  # three add up past int32
    store.add(store.rows_for(["a", "a", "a"]), np.full(3, T0), big)
    assert (store.window_counts(store.rows_for(["a"]))["30d"] == 3 * (2**31 - 10)).all()
    copied = pickle.loads(pickle.dumps(store))
    assert (copied.window_counts(copied.rows_for(["a"]))["1h"] == 3 * (2**31 - 10)).all()


def test_a_pickled_or_copied_store_equals_the_original_and_keeps_working() -> None:
    for make_copy in (lambda s: pickle.loads(pickle.dumps(s)), copy.deepcopy):
        store = filled(entities=300, n=20_000)
        store.release(store.live_rows())
        copied = make_copy(store)
        assert same(store, copied)
        # Both go on identically: new entities (in released rows) and time passing (expiry).
        for s in (store, copied):
            s.advance(T0 + 41 * DAY + 3 * HOUR)
            rows = s.rows_for(["u0", "new-1", "new-2"])
            s.add(
                rows,
                np.full(3, T0 + 41 * DAY + 3 * HOUR - MINUTE),
                np.ones((3, len(METRICS)), dtype=np.int64),
            )
        assert same(store, copied) and store.ids == copied.ids
        copied.advance(T0 + 400 * DAY)  # everything expired: every sum back to 0
        assert all(not v.any() for v in copied.sums.values())


def test_a_snapshot_is_the_size_of_its_tiles() -> None:
    """Recovery pickles every shard each epoch: about 52 bytes per entity and non-empty tile
    (int32 row and sums) plus its id; sums are recomputed on load."""
    for entities, n in ((4, 200), (3_000, 20_000)):
        store = filled(entities, n, span=2 * DAY)
        entries = sum(len(t) for ts_ in store.tiles.values() for t in ts_.values())
        ids = sum(len(k) + 5 for k in store.ids)
        assert len(pickle.dumps(store)) <= 52 * entries + ids + 2_000


def test_a_snapshot_of_the_dense_rings_still_loads() -> None:
    """Recovery stores written before the sparse tiles hold the rings, sparse or dense."""
    with gzip.open(RINGS, "rb") as f:
        old = pickle.load(f)
    rng = np.random.default_rng(old["seed"])
    n = old["events"]
    ts = np.sort(T0 + rng.integers(0, 40 * DAY, size=n))
    ids = [f"u{i}" for i in rng.integers(0, 20, size=n)]
    metrics = rng.integers(0, 3, size=(n, len(METRICS)))
    for form in ("sparse", "dense"):
        fresh = TileStore()
        fill(fresh, ts, ids, metrics, batch=old["batch"])
        restored = TileStore.__new__(TileStore)
        restored.__setstate__(copy.deepcopy(old[form]))
        assert restored.ids == old["ids"]
        rows = restored.live_rows()
        assert all(np.array_equal(restored.sums[k][rows], old["counts"][k]) for k in old["counts"])
        assert same(restored, fresh)
        later = T0 + 45 * DAY
        assert np.array_equal(restored.advance(later), fresh.advance(later))
        assert same(restored, fresh)
