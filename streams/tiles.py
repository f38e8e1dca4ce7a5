"""Columnar tile rings: per-entity event counts in event-time tiles, summed into sliding windows.

Windows follow Chronon's "sawtooth": a window of length w with hop h, read as of event time W,
is the sum of the tiles with index in (floor(W/h) - w/h, floor(W/h)], i.e. it covers
[(floor(W/h) - w/h + 1) h, W] - the span (W - w, W] to within one hop at its old edge.
Hops: 5 min for 1h, 1 h for 1d and 7d, 1 d for 30d. Each hop keeps a ring of as many tiles as
its longest window; a slot also records which tile it holds, so a stale slot is never summed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR

METRICS = (
    "impressions", "clicks", "likes", "collects", "shares", "comments", "follows", "plays",
    "hides", "watch_ms", "completions",
)  # fmt: skip
TYPE_METRIC = {
    "impression": 0, "click": 1, "like": 2, "collect": 3, "share": 4, "comment": 5,
    "follow": 6, "play": 7, "hide": 8,
}  # fmt: skip
WATCH, COMPLETION = METRICS.index("watch_ms"), METRICS.index("completions")
COMPLETION_FRACTION = 0.8


@dataclass(frozen=True)
class Window:
    """One sliding window: its name, length and hop (tile size), both in ms."""

    name: str
    length_ms: int
    hop_ms: int

    @property
    def tiles(self) -> int:
        """Number of tiles the window sums."""
        return self.length_ms // self.hop_ms


WINDOWS = (
    Window("1h", HOUR, 5 * MINUTE),
    Window("1d", DAY, HOUR),
    Window("7d", 7 * DAY, HOUR),
    Window("30d", 30 * DAY, DAY),
)
EMPTY_TILE = np.iinfo(np.int64).min // 2


def ring_sizes(windows: tuple[Window, ...] = WINDOWS) -> dict[int, int]:
    """Return hop -> ring length (the longest window using that hop, in tiles)."""
    sizes: dict[int, int] = {}
    for w in windows:
        sizes[w.hop_ms] = max(sizes.get(w.hop_ms, 0), w.tiles)
    return sizes


def event_metrics(kinds: np.ndarray, watch: np.ndarray, completed: np.ndarray) -> np.ndarray:
    """Return the (n, len(METRICS)) int64 contribution of each event.

    Args:
        kinds: metric index of each event's type (`TYPE_METRIC`), shape (n,).
        watch: watch_ms of plays, 0 for other events, shape (n,).
        completed: True where a play watched >= 80 % of a known duration, shape (n,).
    """
    out = np.zeros((len(kinds), len(METRICS)), dtype=np.int64)  # (n, M)
    out[np.arange(len(kinds)), kinds] = 1
    out[:, WATCH] = watch
    out[:, COMPLETION] = completed
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
        self.tile_of = {h: np.full((capacity, n), EMPTY_TILE, dtype=np.int64)
                        for h, n in self.sizes.items()}  # fmt: skip

    def __len__(self) -> int:
        return len(self.ids)

    def rows_for(self, ids: list[str]) -> np.ndarray:
        """Map entity ids to rows, adding unseen ids (growing the arrays by doubling)."""
        index = self.index
        rows = np.empty(len(ids), dtype=np.int64)
        for i, key in enumerate(ids):
            row = index.get(key)
            if row is None:
                row = index[key] = len(self.ids)
                self.ids.append(key)
            rows[i] = row
        capacity = next(iter(self.rings.values())).shape[0]
        if len(self.ids) > capacity:
            new = max(2 * capacity, len(self.ids))
            for h, ring in self.rings.items():
                grown = np.zeros((new, *ring.shape[1:]), dtype=ring.dtype)
                grown[:capacity] = ring
                self.rings[h] = grown
                tiles = np.full((new, ring.shape[1]), EMPTY_TILE, dtype=np.int64)
                tiles[:capacity] = self.tile_of[h]
                self.tile_of[h] = tiles
        return rows

    def add(self, rows: np.ndarray, ts: np.ndarray, metrics: np.ndarray, as_of: int) -> None:
        """Add events (rows, event times, (n, M) metrics) to every hop's ring.

        Events older than a hop's ring as of `as_of` (the high-water mark after this batch)
        fall outside every window of that hop and are left out of it.
        """
        for hop, n in self.sizes.items():
            tile = ts // hop  # (n_events,)
            keep = tile > as_of // hop - n
            if not keep.any():
                continue
            tile, r, met = tile[keep], rows[keep], metrics[keep]
            flat = r * n + tile % n
            order = np.argsort(flat, kind="stable")
            flat, tile, met = flat[order], tile[order], met[order]
            starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
            slots = flat[starts]
            sums = np.add.reduceat(met, starts, axis=0)  # (slots, M)
            slot_tile = tile[starts]
            ring = self.rings[hop].reshape(-1, len(METRICS))
            held = self.tile_of[hop].reshape(-1)
            stale = held[slots] != slot_tile
            ring[slots[stale]] = 0
            held[slots] = slot_tile
            ring[slots] += sums

    def window_counts(self, rows: np.ndarray, as_of: int) -> dict[str, np.ndarray]:
        """Return window name -> (len(rows), M) counts as of event time `as_of`."""
        out = {}
        for w in self.windows:
            last = as_of // w.hop_ms
            tiles = self.tile_of[w.hop_ms][rows]  # (R, n)
            live = (tiles > last - w.tiles) & (tiles <= last)
            out[w.name] = np.einsum("rnm,rn->rm", self.rings[w.hop_ms][rows], live)  # (R, M)
        return out

    def rows_changed_by_time(self, before: int, after: int) -> np.ndarray:
        """Rows whose window values change when the clock moves from `before` to `after`.

        A value changes when a tile holding data leaves a window: for each window, tiles with
        index in (floor(before/h) - n, floor(after/h) - n].
        """
        size = len(self.ids)
        changed = np.zeros(size, dtype=bool)
        for w in self.windows:
            lo, hi = before // w.hop_ms - w.tiles, after // w.hop_ms - w.tiles
            if hi <= lo:
                continue
            tiles = self.tile_of[w.hop_ms][:size]
            changed |= ((tiles > lo) & (tiles <= hi)).any(axis=1)
        return np.flatnonzero(changed)
