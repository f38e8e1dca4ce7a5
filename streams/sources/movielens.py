"""MovieLens `u.data` as an interaction stream.

Mapping (documented in docs/sources.md): every rating at unix time s becomes an `impression` at
s*1000 ms and a `click` at s*1000+1; a rating >= 4 adds a `like` at s*1000+2. The movie's first
genre from `u.item` (when that file sits beside `u.data`) is the note's `category`. Events are
replayed sorted by event time; `event_id` is `ml:<user>:<item>:<type>`, so two replays of the same
file produce the same ids.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from streams.errors import SourceError
from streams.events import Event
from streams.sources import FileSource, expand_rows

GENRES = (
    "unknown",
    "action",
    "adventure",
    "animation",
    "childrens",
    "comedy",
    "crime",
    "documentary",
    "drama",
    "fantasy",
    "film-noir",
    "horror",
    "musical",
    "mystery",
    "romance",
    "sci-fi",
    "thriller",
    "war",
    "western",
)


def _genres(item_file: Path) -> dict[str, str]:
    genres: dict[str, str] = {}
    if not item_file.exists():
        return genres
    for line in item_file.read_text(encoding="latin-1").splitlines():
        parts = line.split("|")
        if len(parts) < 24:
            continue
        flags = parts[5:24]
        first = next((i for i, f in enumerate(flags) if f == "1"), 0)
        genres[parts[0]] = GENRES[first]
    return genres


class MovieLensSource(FileSource):
    """Replay a MovieLens 100K `u.data` file (user, item, rating, unix seconds; tab-separated)."""

    name = "movielens"
    missing = "MovieLens ratings file not found: {path} (expected u.data)"

    def _ratings(self) -> np.ndarray:
        try:
            data = np.loadtxt(self.path, dtype=np.int64, ndmin=2)
        except ValueError as exc:
            raise SourceError(f"{self.path} is not a u.data file: {exc}") from exc
        if data.shape[1] < 4:
            raise SourceError(f"{self.path}: expected 4 columns: user item rating unix_seconds")
        return data

    def batches(self) -> Iterator[list[Event]]:
        """Yield the events in time order, `batch_size` at a time."""
        genres = _genres(self.path.with_name("u.item"))
        data = self._ratings()
        users, items, rating = data[:, 0], data[:, 1], data[:, 2]
        everyone = np.ones(len(data), dtype=bool)
        parts = [("impression", 0, everyone), ("click", 1, everyone), ("like", 2, rating >= 4)]
        yield from self._batches(
            expand_rows(data[:, 3] * 1000, parts),
            [kind for kind, _, _ in parts],
            users.astype(str),
            items.astype(str),
            lambda _r, u, n: f"ml:{u}:{n}",
            lambda kind, _r, n: {
                "category": genres.get(n),
                "position": 0 if kind == "impression" else None,
            },
        )
