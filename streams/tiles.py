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
    TYPE_METRIC,
    WATCH,
    WINDOWS,
    Window,
    expected_completion_milli,
)

PLAY = TYPE_METRIC["play"]


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
        duration: duration_ms of each event where known (only plays' count), shape (n,).
    """
    out = np.zeros((len(kinds), len(METRICS)), dtype=np.int64)  # (n, M)
    out[np.arange(len(kinds)), kinds] = 1
    out[:, WATCH] = watch
    duration = np.where(kinds == PLAY, duration, 0)  # impressions carry the item's duration too
    out[:, COMPLETION] = (duration > 0) & (watch >= COMPLETION_FRACTION * duration)
    out[:, EXPECTED] = expected_completion_milli(duration)
    return out


def _sparse(array: np.ndarray) -> np.ndarray | tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """`array` itself where most cells are set, else (shape, flat indices, values) of its
    non-zero cells (12 bytes per cell instead of 8 per cell)."""
    flat = array.reshape(-1)
    at = np.flatnonzero(flat)
    if 3 * len(at) >= 2 * len(flat):
        return array  # pickled as its own rows; deepcopy copies it once
    return array.shape, at.astype(np.int32 if len(flat) < 2**31 else np.int64), flat[at]


def _dense(cells: np.ndarray | tuple, rows: int) -> np.ndarray:
    """The array `_sparse` described, with room for `rows` rows (zeros beyond its own)."""
    if isinstance(cells, np.ndarray):  # kept dense (or a snapshot from before the sparse form)
        out = np.zeros((max(rows, len(cells)), *cells.shape[1:]), dtype=cells.dtype)
        out[: len(cells)] = cells
        return out
    shape, at, values = cells
    out = np.zeros((max(rows, shape[0]), *shape[1:]), dtype=values.dtype)
    out.reshape(-1)[at] = values
    return out


class TileStore:
    """Tiles of every entity of one shard; grows with the entities it sees."""

    def __init__(self, windows: tuple[Window, ...] = WINDOWS, capacity: int = 64) -> None:
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

    def __getstate__(self) -> dict:
        """Pickle (and deepcopy) the entities' rows only, as their non-zero cells: most ring
        slots of most entities are empty, and recovery snapshots every epoch."""
        n, state = len(self.ids), self.__dict__.copy()
        for name in ("rings", "tile_of", "sums"):
            state[name] = {k: _sparse(a[:n]) for k, a in state[name].items()}
        return state

    def __setstate__(self, state: dict) -> None:
        capacity = max(len(state["ids"]), 16)
        for name in ("rings", "tile_of", "sums"):
            state[name] = {k: _dense(cells, capacity) for k, cells in state[name].items()}
        self.__dict__.update(state)

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
        it and are subtracted from its sums; only the ring slots that can hold them are read.
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
            ring = self.sizes[w.hop_ms]
            tiles = self.tile_of[w.hop_ms][:size]  # tile + 1
            if hi - lo < ring:  # a slot holds stored tile s at s % ring
                slots = np.arange(lo + 1, hi + 1) % ring
                rows, j = np.nonzero((tiles[:, slots] > lo) & (tiles[:, slots] <= hi))
                slots = slots[j]
            else:
                rows, slots = np.nonzero((tiles > lo) & (tiles <= hi))
            if len(rows):
                np.subtract.at(self.sums[w.name], rows, self.rings[w.hop_ms][rows, slots])
                changed[rows] = True
        return np.flatnonzero(changed)

    def expiries(self, after: int, until: int) -> np.ndarray:
        """Sorted distinct times in (after, until] at which a held tile leaves some window."""
        size, out = len(self.ids), []
        for w in self.windows:
            h, ring = w.hop_ms, self.sizes[w.hop_ms]
            tiles = self.tile_of[h][:size]  # tile + 1
            first, last = after // h + 1, until // h  # boundaries j h in (after, until]
            if last < first or size == 0:
                continue
            if last - first + 1 <= ring:
                leaving = np.arange(first, last + 1) - w.tiles  # tile leaving at boundary j h
                hit = (tiles[:, (leaving + 1) % ring] == leaving + 1).any(axis=0)
                out.append((leaving[hit] + w.tiles) * h)
            else:
                at = (tiles[tiles > 0] - 1 + w.tiles) * h
                out.append(at[(at > after) & (at <= until)])
        return np.unique(np.concatenate(out)) if out else np.empty(0, dtype=np.int64)

    def history(
        self, rows: np.ndarray, ts: np.ndarray, metrics: np.ndarray, until: int
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Apply events in event-time order and move the clock to `until`, returning every change.

        Every event must lie in (clock, until]. Returns (rows, times, window name -> (K, M)
        sums): one entry per (row, time) at which the row's window values changed - at its own
        event times and at the tile boundaries where one of its tiles left a window - holding
        the values from that time until the row's next entry. Rows are in time order.
        """
        if self.clock is None:
            self.advance(int(ts.min()) - 1 if len(ts) else until)
        order = np.argsort(ts, kind="stable")
        rows, ts, metrics = rows[order], ts[order], metrics[order]
        clock = self.clock
        times = [self.expiries(clock, until)]
        for w in self.windows:  # tiles the events bring in may leave before `until` too
            at = (ts // w.hop_ms + w.tiles) * w.hop_ms
            times.append(at[at <= until])
        boundaries = np.unique(np.concatenate(times))
        cuts = np.searchsorted(ts, boundaries, side="left").tolist()
        out_rows: list[np.ndarray] = []
        out_ts: list[np.ndarray] = []
        out_sums: list[dict[str, np.ndarray]] = []
        prev = 0
        for b, cut in zip([*boundaries.tolist(), None], [*cuts, len(ts)], strict=True):
            if cut > prev:  # events before the next boundary: no tile leaves among them
                r, t, m = self._segment(rows[prev:cut], ts[prev:cut], metrics[prev:cut])
                out_rows.append(r)
                out_ts.append(t)
                out_sums.append(m)
                prev = cut
            if b is not None:
                changed = self.advance(b)
                out_rows.append(changed)
                out_ts.append(np.full(len(changed), b, dtype=np.int64))
                out_sums.append({k: s[changed] for k, s in self.sums.items()})
        changed = self.advance(until)  # nothing leaves here: every boundary was visited
        assert not len(changed), "a tile left a window between the visited boundaries"
        if not out_rows:
            empty = np.empty(0, dtype=np.int64)
            m = len(METRICS)
            return empty, empty, {w.name: np.empty((0, m), np.int64) for w in self.windows}
        r, t = np.concatenate(out_rows), np.concatenate(out_ts)
        sums = {w.name: np.concatenate([s[w.name] for s in out_sums]) for w in self.windows}
        # One entry per (row, time): the last computed (an event at a boundary follows the expiry).
        order = np.lexsort((np.arange(len(r)), r, t))
        r, t = r[order], t[order]
        last = np.r_[(r[1:] != r[:-1]) | (t[1:] != t[:-1]), True]
        keep = order[last]
        return r[last], t[last], {k: v[keep] for k, v in sums.items()}

    def _segment(
        self, rows: np.ndarray, ts: np.ndarray, metrics: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Add time-ordered events between two tile boundaries; return each (row, event time)'s
        values after it (no tile leaves a window among them, so each value is the sum before
        plus the row's events so far)."""
        self.advance(int(ts[-1]))
        order = np.lexsort((ts, rows))  # by row, then time (stable)
        r, t, m = rows[order], ts[order], metrics[order]
        running = np.cumsum(m, axis=0)
        first = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        before = running[first] - m[first]  # running total before each row's first event
        sizes = np.diff(np.r_[first, len(r)])
        running -= np.repeat(before, sizes, axis=0)
        last = np.r_[(r[1:] != r[:-1]) | (t[1:] != t[:-1]), True]
        r_last = r[last]
        values = {k: s[r_last] + running[last] for k, s in self.sums.items()}
        self.add(rows, ts, metrics)
        return r_last, t[last], values

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
