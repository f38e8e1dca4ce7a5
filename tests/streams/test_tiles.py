"""Tile stores: a snapshot holds exactly the tiles, at the size of what they hold."""

from __future__ import annotations

import copy
import pickle

import numpy as np

from features.windows import DAY, HOUR, METRICS, MINUTE
from streams.tiles import TileStore

T0 = 1_041_379_200_000


def filled(entities: int, events: int, seed: int = 0) -> TileStore:
    rng = np.random.default_rng(seed)
    store = TileStore()
    ts = np.sort(T0 + rng.integers(0, 40 * DAY, size=events))
    ids = [f"u{i}" for i in rng.integers(0, entities, size=events)]
    metrics = rng.integers(0, 3, size=(events, len(METRICS)))
    for lo in range(0, events, 500):
        store.advance(int(ts[lo : lo + 500].max()))
        rows = store.rows_for(ids[lo : lo + 500])
        store.add(rows, ts[lo : lo + 500], metrics[lo : lo + 500])
    return store


def same(a: TileStore, b: TileStore) -> bool:
    n = len(a)
    arrays = ("rings", "tile_of", "sums")
    return (a.ids, a.index, a.clock) == (b.ids, b.index, b.clock) and all(
        np.array_equal(getattr(a, name)[k][:n], getattr(b, name)[k][:n])
        for name in arrays
        for k in getattr(a, name)
    )


def test_a_pickled_or_copied_store_equals_the_original_and_keeps_working() -> None:
    for make_copy in (lambda s: pickle.loads(pickle.dumps(s)), copy.deepcopy):
        store = filled(entities=300, events=20_000)
        copied = make_copy(store)
        assert same(store, copied)
        # Both go on identically: new entities (growth) and time passing (expiry).
        for s in (store, copied):
            s.advance(T0 + 41 * DAY + 3 * HOUR)
            rows = s.rows_for(["u0", "new-1", "new-2"])
            s.add(
                rows,
                np.full(3, T0 + 41 * DAY + 3 * HOUR - MINUTE),
                np.ones((3, len(METRICS)), dtype=np.int64),
            )
        assert same(store, copied)
        copied.advance(T0 + 400 * DAY)  # everything expired: every sum back to 0
        assert all(not v[: len(copied)].any() for v in copied.sums.values())


def test_a_snapshot_is_the_size_of_its_tiles_not_of_its_capacity() -> None:
    """Recovery pickles every shard each epoch: a shard of 4 entities was 45 MB dense."""
    sizes = {}
    for entities, events in ((4, 200), (300, 20_000)):
        store = filled(entities, events)
        arrays = [a for d in (store.rings, store.tile_of, store.sums) for a in d.values()]
        rows = sum(a[: len(store)].nbytes for a in arrays)
        sizes[entities] = len(pickle.dumps(store)) / rows
    assert sizes[4] < 0.35  # a few events per entity: mostly empty slots
    assert sizes[300] < 1.0  # dense rows are kept dense, never larger


def test_a_snapshot_written_in_the_dense_form_still_loads() -> None:
    """Recovery stores written before the sparse form hold the arrays themselves."""
    store = filled(entities=50, events=2_000)
    old = store.__dict__.copy()  # what pickle wrote before TileStore had __getstate__
    restored = TileStore.__new__(TileStore)
    restored.__setstate__(copy.deepcopy(old))
    assert same(store, restored)
