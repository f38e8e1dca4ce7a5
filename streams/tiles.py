"""Columnar tile rings: per-entity event counts in event-time tiles, summed into sliding windows.

Windows follow Chronon's "sawtooth": a window of length w with hop h, read as of event time W,
is the sum of the tiles with index in (floor(W/h) - w/h, floor(W/h)], i.e. it covers
[(floor(W/h) - w/h + 1) h, W] - the span (W - w, W] to within one hop at its old edge.
Hops: 5 min for 1h, 1 h for 1d and 7d, 1 d for 30d. Each hop keeps a ring of as many tiles as
its longest window; a slot also records which tile it holds (stored as tile + 1, so that the
zero-filled arrays of new entities read as empty). Each window's sum is kept up to date
incrementally: an event is added to the sums of the windows it falls in, and when the clock
moves, the tiles leaving a window are subtracted - so a read costs O(entities x metrics), and the
entities whose values changed because time passed are known without rescanning all tiles.
"""

from __future__ import annotations

import numpy as np

from features.windows import (
    COMPLETION,
    COMPLETION_FRACTION,
    EXPECTED,
    METRICS,
    WATCH,
    WINDOWS,
    Window,
    expected_completion_milli,
)


def ring_sizes(windows: tuple[Window, ...] = WINDOWS) -> dict[int, int]:
    """Return hop -> ring length (the longest window using that hop, in tiles)."""
    sizes: dict[int, int] = {}
    for w in windows:
        sizes[w.hop_ms] = max(sizes.get(w.hop_ms, 0), w.tiles)
    return sizes


def event_metrics(kinds: np.ndarray, watch: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """Return the (n, len(METRICS)) int64 contribution of each event.

    Args:
        kinds: metric index of each event's type (`TYPE_METRIC`), shape (n,).
        watch: watch_ms of plays, 0 for other events, shape (n,).
        duration: duration_ms of plays, 0 where unknown or not a play, shape (n,).
    """
    out = np.zeros((len(kinds), len(METRICS)), dtype=np.int64)  # (n, M)
    out[np.arange(len(kinds)), kinds] = 1
    out[:, WATCH] = watch
    out[:, COMPLETION] = (duration > 0) & (watch >= COMPLETION_FRACTION * duration)
    out[:, EXPECTED] = expected_completion_milli(duration)
    return out


class TileStore:
    """Tiles of every entity of one shard; grows with the entities it sees."""

    def __init__(self, windows: tuple[Window, ...] = WINDOWS, capacity: int = 1024) -> None:
        self.windows = windows
        self.sizes = ring_sizes(windows)
        self.index: dict[str, int] = {}
        self.ids: list[str] = []
        m = len(METRICS)
        self.rings = {h: np.zeros((capacity, n, m), dtype=np.int64) for h, n in self.sizes.items()}
        self.tile_of = {h: np.zeros((capacity, n), dtype=np.int64) for h, n in self.sizes.items()}
        self.sums = {w.name: np.zeros((capacity, m), dtype=np.int64) for w in windows}
        self.clock: int | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def rows_for(self, ids: list[str]) -> np.ndarray:
        """Map entity ids to rows, adding unseen ids (growing the arrays by doubling)."""
        index = self.index
        found = [index.get(key) for key in ids]
        if None in found:
            for i, key in enumerate(ids):
                if found[i] is None:
                    row = index.get(key)
                    if row is None:
                        row = index[key] = len(self.ids)
                        self.ids.append(key)
                    found[i] = row
            self._grow(len(self.ids))
        return np.array(found, dtype=np.int64)

    def _grow(self, needed: int) -> None:
        capacity = len(next(iter(self.sums.values())))
        if needed <= capacity:
            return
        new = max(2 * capacity, needed)

        def grown(array: np.ndarray) -> np.ndarray:
            out = np.zeros((new, *array.shape[1:]), dtype=array.dtype)
            out[:capacity] = array
            return out

        self.rings = {h: grown(r) for h, r in self.rings.items()}
        self.tile_of = {h: grown(t) for h, t in self.tile_of.items()}
        self.sums = {w: grown(v) for w, v in self.sums.items()}

    def advance(self, now: int) -> np.ndarray:
        """Move the clock to event time `now`; return the rows whose window values changed.

        For each window, the tiles with index in (floor(before/h) - n, floor(now/h) - n] leave
        it and are subtracted from its sums.
        """
        before, size = self.clock, len(self.ids)
        if before is not None and now <= before:
            return np.empty(0, dtype=np.int64)
        self.clock = now
        if before is None or size == 0:
            return np.empty(0, dtype=np.int64)
        changed = np.zeros(size, dtype=bool)
        for w in self.windows:
            lo, hi = before // w.hop_ms - w.tiles + 1, now // w.hop_ms - w.tiles + 1
            if hi <= lo:
                continue
            tiles = self.tile_of[w.hop_ms][:size]  # tile + 1
            rows, slots = np.nonzero((tiles > lo) & (tiles <= hi))
            if len(rows):
                np.subtract.at(self.sums[w.name], rows, self.rings[w.hop_ms][rows, slots])
                changed[rows] = True
        return np.flatnonzero(changed)

    def add(self, rows: np.ndarray, ts: np.ndarray, metrics: np.ndarray) -> None:
        """Add events (rows, event times, (n, M) metrics) as of the current clock.

        Call `advance` to the batch's high-water mark first. An event enters a window's sum only
        if its tile is inside that window now, and a hop's ring only if inside its longest window.
        """
        if self.clock is None:
            raise ValueError("advance the clock before adding events")
        m = len(METRICS)
        for hop, n in self.sizes.items():
            tile = ts // hop + 1  # (n_events,) stored as tile + 1
            last = self.clock // hop + 1
            keep = tile > last - n
            if not keep.any():
                continue
            tile, r, met = tile[keep], rows[keep], metrics[keep]
            flat = r * n + tile % n
            order = np.argsort(flat, kind="stable")
            flat, tile, met, r = flat[order], tile[order], met[order], r[order]
            starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
            slots, slot_tile, slot_row = flat[starts], tile[starts], r[starts]
            slot_sums = np.add.reduceat(met, starts, axis=0)  # (slots, M)
            ring = self.rings[hop].reshape(-1, m)
            held = self.tile_of[hop].reshape(-1)
            stale = held[slots] != slot_tile
            ring[slots[stale]] = 0
            held[slots] = slot_tile
            ring[slots] += slot_sums
            for w in self.windows:
                if w.hop_ms != hop:
                    continue
                inside = slot_tile > last - w.tiles
                np.add.at(self.sums[w.name], slot_row[inside], slot_sums[inside])

    def window_counts(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Return window name -> (len(rows), M) counts as of the clock."""
        return {name: sums[rows] for name, sums in self.sums.items()}
