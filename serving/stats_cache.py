"""The pre-ranker's note statistics: an in-process cache of the notes' window counts.

Note statistics are the same for every user, and the pre-ranker reads them for every merged
candidate (about 2,000 per request): reading all of them from Redis took 51 ms of an 81 ms
/recommend. The cache keeps each note's row (`STAT_FEATURES` order) for at most `max_age_s`
seconds after it was read; a request reads from Redis only the notes it has no row of, or
whose row is older (one pipelined round trip, as before). So a row the pre-ranker uses is at
most `max_age_s` older than the store's (plus the store's own freshness). Each row's lifetime is
drawn in [max_age_s / 2, max_age_s] so that rows read by one request do not all expire in the
same later request (which would pay the whole read again). The ranker does not use it: its
`rank_k` notes are read fresh (`Recommender.recommend`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

Reader = Callable[[list[str]], tuple[np.ndarray, bool]]
"""ids -> ((n, F) counts, whether they are zeros because the store could not be read)."""


class NoteStatsCache:
    """Note id -> its window counts as last read, each kept at most `max_age_s` seconds.

    Args:
        read: reads the counts of notes from the store (one round trip).
        width: counts per note (F).
        max_age_s: longest a row is served after it was read (0: read every note every time).
        max_notes: rows kept at most; beyond it the cache starts empty again.
        clock: monotonic seconds (tests pass a fake).
        seed: of the rows' lifetimes.
    """

    def __init__(
        self,
        read: Reader,
        width: int,
        max_age_s: float,
        max_notes: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
        seed: int = 0,
    ) -> None:
        self._read, self._width, self.max_age_s = read, width, max_age_s
        self._max_notes, self._clock = max_notes, clock
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self._row: dict[str, int] = {}
        self._values = np.zeros((1_024, self._width))
        self._expires = np.zeros(1_024)

    def __len__(self) -> int:
        return len(self._row)

    def get(self, ids: list[str]) -> tuple[np.ndarray, bool, int]:
        """(n, F) counts of `ids`, whether some are zeros because the store could not be read,
        and how many were read from the store (the others came from the cache)."""
        if self.max_age_s <= 0:
            values, degraded = self._read(ids)
            return values, degraded, len(ids)
        now = self._clock()
        with self._lock:
            rows = np.fromiter((self._row.get(i, -1) for i in ids), np.int64, len(ids))
            stale = (rows < 0) | (self._expires[rows] <= now)
            cached = self._values[rows]  # rows of -1: overwritten below
        need = np.flatnonzero(stale)
        if not len(need):
            return cached, False, 0
        wanted = list(dict.fromkeys(ids[j] for j in need.tolist()))
        fresh, degraded = self._read(wanted)
        at = {n: k for k, n in enumerate(wanted)}
        cached[need] = fresh[[at[ids[j]] for j in need.tolist()]]
        if not degraded:
            self._store(wanted, fresh, now)
        return cached, degraded, len(wanted)

    def _store(self, ids: list[str], values: np.ndarray, now: float) -> None:
        lifetimes = now + self.max_age_s * self._rng.uniform(0.5, 1.0, len(ids))
        with self._lock:
            if len(self._row) + len(ids) > self._max_notes:
                self._clear()
            rows = np.empty(len(ids), dtype=np.int64)
            for k, n in enumerate(ids):
                j = self._row.get(n)
                if j is None:
                    j = self._row[n] = len(self._row)
                rows[k] = j
            if len(self._row) > len(self._values):
                size = max(len(self._row), 2 * len(self._values))
                self._values = np.concatenate(
                    [self._values, np.zeros((size - len(self._values), self._width))]
                )
                self._expires = np.concatenate([self._expires, np.zeros(size - len(self._expires))])
            self._values[rows] = values
            self._expires[rows] = lifetimes
