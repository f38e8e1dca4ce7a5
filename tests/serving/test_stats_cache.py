"""The pre-ranker's note statistics cache: what it serves, how old, and after a failed read."""

from __future__ import annotations

import numpy as np

from serving.stats_cache import NoteStatsCache


class Store:
    """A fake store: note "nK" has counts [K * version] * 3; counts the notes it was asked."""

    def __init__(self) -> None:
        self.version, self.asked, self.down = 1, 0, False

    def read(self, ids: list[str]) -> tuple[np.ndarray, bool]:
        if self.down:
            return np.zeros((len(ids), 3)), True
        self.asked += len(ids)
        return np.array([[int(i[1:]) * self.version] * 3 for i in ids], dtype=np.float64), False


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _expected(ids: list[str], version: int) -> np.ndarray:
    return np.array([[int(i[1:]) * version] * 3 for i in ids], dtype=np.float64)


def test_rows_are_served_from_the_cache_and_never_older_than_max_age() -> None:
    store, clock = Store(), Clock()
    cache = NoteStatsCache(store.read, 3, max_age_s=2.0, clock=clock)
    ids = [f"n{k}" for k in range(50)]
    values, degraded, read = cache.get(ids)
    np.testing.assert_array_equal(values, _expected(ids, 1))
    assert not degraded and read == 50 and len(cache) == 50
    store.version = 2  # the store moves on
    clock.now += 0.99  # younger than max_age / 2: every row still served from the cache
    mixed = ["n3", "n60", "n3", "n7"]  # duplicates, one note never read
    values, _, read = cache.get(mixed)
    assert read == 1 and store.asked == 51
    want = np.concatenate([_expected(["n3"], 1), _expected(["n60"], 2), _expected(["n3", "n7"], 1)])
    np.testing.assert_array_equal(values, want)
    clock.now += 0.5  # 1.49 s: lifetimes are drawn in [1, 2] s, some rows expired, not all
    values, _, read = cache.get(ids)
    assert 0 < read < 50
    clock.now += 0.52  # 2.01 s after the first read: older than max_age, every row read again
    values, _, read = cache.get(ids[:10])
    np.testing.assert_array_equal(values, _expected(ids[:10], 2))


def test_no_max_age_reads_the_store_every_time() -> None:
    store = Store()
    cache = NoteStatsCache(store.read, 3, max_age_s=0.0, clock=Clock())
    for version in (1, 2):
        store.version = version
        values, _, read = cache.get(["n1", "n2"])
        np.testing.assert_array_equal(values, _expected(["n1", "n2"], version))
        assert read == 2
    assert store.asked == 4 and len(cache) == 0


def test_an_unreadable_store_gives_zeros_flagged_and_caches_nothing() -> None:
    store, clock = Store(), Clock()
    cache = NoteStatsCache(store.read, 3, max_age_s=1.0, clock=clock)
    cache.get(["n1"])
    store.down = True
    values, degraded, _ = cache.get(["n1", "n2"])
    assert degraded
    np.testing.assert_array_equal(values, [[1, 1, 1], [0, 0, 0]])  # n1 still young: cached
    store.down = False
    values, degraded, read = cache.get(["n2"])
    assert not degraded and read == 1
    np.testing.assert_array_equal(values, [[2, 2, 2]])


def test_the_cache_starts_again_beyond_max_notes() -> None:
    store = Store()
    cache = NoteStatsCache(store.read, 3, max_age_s=10.0, max_notes=3_000, clock=Clock())
    ids = [f"n{k}" for k in range(2_000)]
    cache.get(ids)  # grows beyond its first 1,024 rows
    values, _, read = cache.get(ids)
    assert read == 0
    np.testing.assert_array_equal(values, _expected(ids, 1))
    more = [f"n{k}" for k in range(2_000, 3_500)]
    values, _, read = cache.get(more)
    assert read == 1_500 and len(cache) == 1_500
    np.testing.assert_array_equal(values, _expected(more, 1))
