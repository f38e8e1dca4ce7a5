"""Event-time windows and the metrics counted in them: the constants every stored format shares.

A windowed feature is named `<metric>_<window>` (`clicks_1h`, `impressions_30d`); the stats job,
the Feast views, the sample log and the learners all read the names from here.
Windows follow Chronon's "sawtooth" (see `streams.tiles`): hops of 5 min for 1h, 1 h for 1d and
7d, 1 d for 30d.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR

METRICS = (
    "impressions",
    "clicks",
    "likes",
    "collects",
    "shares",
    "comments",
    "follows",
    "plays",
    "hides",
    "watch_ms",
    "completions",
    "expected_completions_milli",
)
TYPE_METRIC = {
    "impression": 0,
    "click": 1,
    "like": 2,
    "collect": 3,
    "share": 4,
    "comment": 5,
    "follow": 6,
    "play": 7,
    "hide": 8,
}
WATCH, COMPLETION = METRICS.index("watch_ms"), METRICS.index("completions")
EXPECTED = METRICS.index("expected_completions_milli")
COMPLETION_FRACTION = 0.8
TYPICAL_DURATION_MS = 60_000


def expected_completion_milli(duration_ms: np.ndarray) -> np.ndarray:
    """Baseline chance (in 1/1000) that a play of a note this long completes: 1/(1 + d/60 s).

    Long videos complete less (seed notes); dividing observed completions by the sum of this
    baseline gives a completion rate adjusted for duration. 0 where the duration is unknown.
    """
    d = duration_ms.astype(np.float64)
    return np.where(d > 0, np.rint(1000.0 / (1.0 + d / TYPICAL_DURATION_MS)), 0).astype(np.int64)


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
