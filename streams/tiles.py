"""Sparse tiles: per-entity event counts in event-time tiles, summed into sliding windows.

Windows follow Chronon's "sawtooth": a window of length w with hop h, read as of event time W,
is the sum of the tiles with index in (floor(W/h) - w/h, floor(W/h)], i.e. it covers
[(floor(W/h) - w/h + 1) h, W] - the span (W - w, W] to within one hop at its old edge.
Hops: 5 min for 1h, 1 h for 1d and 7d, 1 d for 30d.

Storage follows activity (docs/stats.md, "State"). A tile is kept per hop and tile index, and
holds only the entities with events in it: their rows (int32) and metric sums (int32, or int64
for a tile whose sums outgrow int32). A hop keeps its tiles while they are inside its longest
window (12 five-minute tiles, 168 hourly, 30 daily): an entity costs tile space only for the
tiles it has events in, and its fine tiles are gone an hour after its last event. Each entity
has one row of window sums (int64, one per window and metric), kept up to date incrementally:
an event is added to the sums of the windows it falls in, and when the clock moves, the tiles
leaving a window are subtracted - so a read costs O(entities read), and moving the clock costs
O(entries of the tiles that leave), whatever the number of entities. `release` drops an entity
once all its windows are zero (it then holds no tile either) and recycles its row.
"""

from __future__ import annotations

import itertools

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
_I32 = np.iinfo(np.int32)
_EMPTY = np.empty(0, dtype=np.int64)


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


def _narrow(values: np.ndarray) -> np.ndarray:
    """`values` as int32 when every value fits, else as int64 (exact either way)."""
    if values.dtype == np.int32:
        return values
    if not len(values) or (values.max() <= _I32.max and values.min() >= _I32.min):
        return values.astype(np.int32)
    return values.astype(np.int64, copy=False)


def _legacy_dense(cells: np.ndarray | tuple) -> np.ndarray:
    """An array of a snapshot from before the sparse tiles (dense, or (shape, at, values))."""
    if isinstance(cells, np.ndarray):
        return cells
    shape, at, values = cells
    out = np.zeros(shape, dtype=values.dtype)
    out.reshape(-1)[at] = values
    return out


class Tile:
    """One tile of one hop: the rows of the entities with events in it and their metric sums.

    Added parts are kept as they come and merged (rows sorted and unique) once they hold as
    many entries as the merged part, so adding costs amortised O(log) per entry.
    """

    __slots__ = ("loose", "parts", "rows", "values")

    def __init__(self, rows: np.ndarray | None = None, values: np.ndarray | None = None) -> None:
        self.rows = np.empty(0, np.int32) if rows is None else rows.astype(np.int32)
        self.values = np.empty((0, len(METRICS)), np.int32) if values is None else _narrow(values)
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []
        self.loose = 0

    def __len__(self) -> int:
        return len(self.rows) + self.loose

    def add(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Add (k,) distinct rows' (k, M) sums."""
        self.parts.append((rows.astype(np.int32), _narrow(values)))
        self.loose += len(rows)
        if self.loose >= max(len(self.rows), 1024):
            self.merge()

    def merge(self) -> None:
        """Merge the added parts into one part, one entry per row, sorted by row."""
        if not self.parts:
            return
        rows = np.concatenate([self.rows, *(r for r, _ in self.parts)])
        values = np.concatenate([self.values, *(v for _, v in self.parts)], dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        rows, values = rows[order], values[order]
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        if len(starts) < len(rows):
            values = np.add.reduceat(values, starts, axis=0)
        self.rows, self.values = rows[starts], _narrow(values)
        self.parts, self.loose = [], 0

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct rows, their (k, M) sums)."""
        self.merge()
        return self.rows, self.values

    def nbytes(self) -> int:
        """Bytes of the tile's arrays."""
        return sum(a.nbytes for part in ((self.rows, self.values), *self.parts) for a in part)


class TileStore:
    """Tiles and window sums of the entities of one shard; holds an entity while any of its
    windows is non-zero (`release`)."""

    def __init__(self, windows: tuple[Window, ...] = WINDOWS, capacity: int = 64) -> None:
        self.windows = windows
        self.sizes = ring_sizes(windows)
        self.index: dict[str, int] = {}
        self.ids: list[str | None] = []
        """Row -> entity id (None: a released row, to be reused)."""
        self.free: list[int] = []
        m = len(METRICS)
        self.tiles: dict[int, dict[int, Tile]] = {h: {} for h in self.sizes}
        """Hop -> tile index (event time // hop) -> tile, for the tiles inside the hop's
        longest window."""
        self.sums = {w.name: np.zeros((capacity, m), dtype=np.int64) for w in windows}
        self.clock: int | None = None

    def __len__(self) -> int:
        """Number of entities held."""
        return len(self.index)

    def __getstate__(self) -> dict:
        """Pickle the tiles (merged) and the row ids; the window sums are recomputed on load,
        so a snapshot costs what the tiles hold - about 52 bytes per entity and non-empty tile."""
        return {
            "windows": self.windows,
            "ids": self.ids,
            "clock": self.clock,
            "tiles": {h: _pack(ts) for h, ts in self.tiles.items()},
        }

    def __setstate__(self, state: dict) -> None:
        if "rings" in state:  # a snapshot of the dense rings (before the sparse tiles)
            state = _from_rings(state)
        self.__init__(state["windows"], capacity=max(len(state["ids"]), 16))
        self.ids, self.clock = list(state["ids"]), state["clock"]
        self.index = {key: row for row, key in enumerate(self.ids) if key is not None}
        self.free = [row for row, key in enumerate(self.ids) if key is None][::-1]
        for h, ts in state["tiles"].items():
            self.tiles[h] = {t: Tile(r, v) for t, (r, v) in _unpack(ts).items()}
        if self.clock is not None:
            for w in self.windows:
                now = self.clock // w.hop_ms
                for t, tile in self.tiles[w.hop_ms].items():
                    if t > now - w.tiles:
                        self.sums[w.name][tile.rows] += tile.values  # rows distinct

    def __deepcopy__(self, memo: dict) -> TileStore:
        """A copy (recovery snapshots each epoch): arrays copied as they are, sums included."""
        out = TileStore.__new__(TileStore)
        out.windows, out.sizes, out.clock = self.windows, dict(self.sizes), self.clock
        out.index, out.ids, out.free = dict(self.index), list(self.ids), list(self.free)
        out.tiles = {
            h: {t: Tile(*(a.copy() for a in tile.arrays())) for t, tile in ts.items()}
            for h, ts in self.tiles.items()
        }
        out.sums = {k: v.copy() for k, v in self.sums.items()}
        memo[id(self)] = out
        return out

    def nbytes(self) -> dict[str, int]:
        """Bytes held, by part: `tiles`, `sums` (allocated rows) and `index` (ids, estimated)."""
        tiles = sum(tile.nbytes() for ts in self.tiles.values() for tile in ts.values())
        sums = sum(v.nbytes for v in self.sums.values())
        # A dict entry (~100 B with its table share), a list slot (8 B), the id string.
        index = sum(49 + len(k) for k in self.index) + 108 * len(self.index) + 8 * len(self.ids)
        return {"tiles": tiles, "sums": sums, "index": index}

    def rows_for(self, ids: list[str]) -> np.ndarray:
        """Map entity ids to rows, adding unseen ids (in released rows first)."""
        index = self.index
        found = [index.get(key) for key in ids]
        if None in found:
            free, known = self.free, self.ids
            for i, key in enumerate(ids):
                if found[i] is None:
                    row = index.get(key)
                    if row is None:
                        if free:
                            row = free.pop()
                            known[row] = key
                        else:
                            row = len(known)
                            known.append(key)
                        index[key] = row
                    found[i] = row
            self._grow(len(known))
        return np.array(found, dtype=np.int64)

    def live_rows(self) -> np.ndarray:
        """The rows of the entities held, ascending."""
        return np.sort(np.fromiter(self.index.values(), dtype=np.int64, count=len(self.index)))

    def release(self, rows: np.ndarray) -> np.ndarray:
        """Drop the entities of `rows` whose every window is zero; return their rows.

        Such an entity holds no tile (every event counts at least once in the longest window of
        each hop, which spans the hop's tiles), so nothing of it remains; its row is reused.
        Call it only once the caller no longer needs the rows' ids (e.g. after a flush).
        """
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if not len(rows):
            return rows
        empty = np.ones(len(rows), dtype=bool)
        for sums in self.sums.values():
            empty &= ~sums[rows].any(axis=1)
        out = rows[empty]
        for row in out.tolist():
            key = self.ids[row]
            if key is not None:
                del self.index[key]
                self.ids[row] = None
                self.free.append(row)
        return out

    def _grow(self, needed: int) -> None:
        capacity = len(next(iter(self.sums.values())))
        if needed <= capacity:
            return
        new = max(capacity + capacity // 4, needed)  # 1.25x: at most a quarter unused

        def grown(array: np.ndarray) -> np.ndarray:
            out = np.zeros((new, *array.shape[1:]), dtype=array.dtype)
            out[:capacity] = array
            return out

        self.sums = {w: grown(v) for w, v in self.sums.items()}

    def advance(self, now: int) -> np.ndarray:
        """Move the clock to event time `now`; return the rows whose window values changed.

        For each window, the tiles with index in (floor(before/h) - n, floor(now/h) - n] leave
        it and are subtracted from its sums; tiles that left their hop's longest window are
        dropped.
        """
        before = self.clock
        if before is not None and now <= before:
            return _EMPTY
        self.clock = now
        if before is None:
            return _EMPTY
        changed = []
        for w in self.windows:
            h = w.hop_ms
            lo, hi = before // h - w.tiles, now // h - w.tiles
            if hi <= lo:
                continue
            sums = self.sums[w.name]
            for t, tile in self.tiles[h].items():
                if lo < t <= hi:
                    rows, values = tile.arrays()
                    sums[rows] -= values
                    changed.append(rows)
        for h, n in self.sizes.items():
            oldest = now // h - n
            tiles = self.tiles[h]
            for t in [t for t in tiles if t <= oldest]:
                del tiles[t]
        if not changed:
            return _EMPTY
        return np.unique(np.concatenate(changed)).astype(np.int64)

    def expiries(self, after: int, until: int) -> np.ndarray:
        """Sorted distinct times in (after, until] at which a held tile leaves some window."""
        out = []
        for w in self.windows:
            h = w.hop_ms
            first, last = after // h + 1, until // h  # boundaries j h in (after, until]
            held = self.tiles[h]
            if last < first or not held:
                continue
            at = np.fromiter(held, dtype=np.int64, count=len(held)) + w.tiles  # leaving at j h
            out.append(at[(at >= first) & (at <= last)] * h)
        return np.unique(np.concatenate(out)) if out else _EMPTY

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
        if its tile is inside that window now, and a hop's tiles only if inside its longest
        window.
        """
        if self.clock is None:
            raise ValueError("advance the clock before adding events")
        for hop, n in self.sizes.items():
            tile = ts // hop
            last = self.clock // hop
            keep = tile > last - n
            if not keep.any():
                continue
            tile, r, met = tile[keep], rows[keep], metrics[keep]
            order = np.lexsort((r, tile))  # by tile, then row
            tile, r = tile[order], r[order]
            starts = np.flatnonzero(np.r_[True, (tile[1:] != tile[:-1]) | (r[1:] != r[:-1])])
            sums = np.add.reduceat(met[order], starts, axis=0, dtype=np.int64)  # (k, M)
            tile, r = tile[starts], r[starts]
            cuts = np.flatnonzero(np.r_[True, tile[1:] != tile[:-1], True]).tolist()
            held = self.tiles[hop]
            for lo, hi in itertools.pairwise(cuts):
                t = int(tile[lo])
                target = held.get(t)
                if target is None:
                    target = held[t] = Tile()
                target.add(r[lo:hi], sums[lo:hi])
            single = len(cuts) == 2  # one tile: its rows are distinct
            for w in self.windows:
                if w.hop_ms != hop:
                    continue
                inside = tile > last - w.tiles
                if single:
                    if inside[0]:
                        self.sums[w.name][r] += sums
                else:
                    np.add.at(self.sums[w.name], r[inside], sums[inside])

    def window_counts(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Return window name -> (len(rows), M) counts as of the clock."""
        return {name: sums[rows] for name, sums in self.sums.items()}


def _pack(tiles: dict[int, Tile]) -> tuple[np.ndarray, ...]:
    """One hop's tiles as four arrays: tile indices, entries per tile, rows, (entries, M) sums."""
    parts = [tile.arrays() for tile in tiles.values()]
    m = len(METRICS)
    return (
        np.fromiter(tiles, dtype=np.int64, count=len(tiles)),
        np.array([len(r) for r, _ in parts], dtype=np.int64),
        np.concatenate([r for r, _ in parts]) if parts else np.empty(0, np.int32),
        np.concatenate([v for _, v in parts]) if parts else np.empty((0, m), np.int32),
    )


def _unpack(packed: tuple | dict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Tile index -> (rows, sums) of `_pack`'s arrays (or of such a dict itself)."""
    if isinstance(packed, dict):
        return packed
    tiles, lengths, rows, values = packed
    cuts = np.r_[0, np.cumsum(lengths)].tolist()
    return {
        t: (rows[lo:hi], values[lo:hi])
        for t, lo, hi in zip(tiles.tolist(), cuts[:-1], cuts[1:], strict=True)
    }


def _from_rings(state: dict) -> dict:
    """The state of a snapshot of dense rings (slot = tile % ring, tile ids stored + 1) as
    sparse tiles: the slots holding a tile still inside the hop's longest window."""
    n = len(state["ids"])
    tiles: dict[int, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    clock = state["clock"]
    for h, ring in ring_sizes(state["windows"]).items():
        tiles[h] = {}
        if clock is None:
            continue
        held = _legacy_dense(state["tile_of"][h])[:n] - 1  # (n, ring) tile, -1: empty
        values = _legacy_dense(state["rings"][h])[:n]  # (n, ring, M)
        rows, slots = np.nonzero(held > clock // h - ring)
        for t in np.unique(held[rows, slots]).tolist():
            sel = held[rows, slots] == t
            tiles[h][t] = (rows[sel], values[rows[sel], slots[sel]])
    return {"windows": state["windows"], "ids": state["ids"], "clock": clock, "tiles": tiles}
