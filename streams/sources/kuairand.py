"""The KuaiRand log layout (CSV or TSV) as an interaction stream.

Columns used: `user_id`, `video_id`, `time_ms` (required); `is_click`, `is_like`, `is_follow`,
`is_comment`, `is_forward`, `play_time_ms`, `duration_ms`, `label` (optional). Each row becomes,
at its `time_ms` t (rows re-sorted by time):

| event | when | condition |
|---|---|---|
| impression | t | always (request_id `kr:<user>:<video>:<t>`; duration_ms when known) |
| click | t+1 | is_click == 1 |
| play | t+2 | play_time_ms present and > 0 (watch_ms = play_time_ms; duration_ms 0 = unknown) |
| like | t+3 | is_like == 1; with no is_like column, label == 1 |
| hide | t+3 | no is_like column and label == 0 (the "hate" of the like/hate subset) |
| comment | t+4 | is_comment == 1 |
| follow | t+5 | is_follow == 1 |
| share | t+6 | is_forward == 1 |

Absent optional columns simply produce none of their events; `long_view` and the other columns
are not events and are ignored. `event_id` is `kr:<user>:<video>:<t>:<type>` (deterministic).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from streams.errors import SourceError
from streams.events import Event
from streams.sources import FileSource, expand_rows

REQUIRED = ("user_id", "video_id", "time_ms")


def _flag(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame:
        return np.zeros(len(frame), dtype=bool)
    return frame[column].fillna(0).to_numpy() == 1


class KuaiRandSource(FileSource):
    """Replay a KuaiRand-style log file."""

    name = "kuairand"
    missing = "KuaiRand log not found: {path}"

    def _frame(self) -> pd.DataFrame:
        sep = "\t" if self.path.suffix in (".tsv", ".txt") else None
        frame = pd.read_csv(self.path, sep=sep, engine="python" if sep is None else "c")
        missing = [c for c in REQUIRED if c not in frame]
        if missing:
            raise SourceError(f"{self.path}: missing required column(s) {', '.join(missing)}")
        return frame

    def batches(self) -> Iterator[list[Event]]:
        """Yield the events in time order, `batch_size` at a time."""
        frame = self._frame()
        n = len(frame)
        if "is_like" in frame:
            like, hate = _flag(frame, "is_like"), np.zeros(n, dtype=bool)
        elif "label" in frame:
            label = frame["label"].to_numpy()
            like, hate = label == 1, label == 0
        else:
            like = hate = np.zeros(n, dtype=bool)
        play = (
            frame["play_time_ms"].fillna(0).to_numpy() > 0
            if "play_time_ms" in frame
            else np.zeros(n, dtype=bool)
        )
        parts = [
            ("impression", 0, np.ones(n, dtype=bool)),
            ("click", 1, _flag(frame, "is_click")),
            ("play", 2, play),
            ("like", 3, like),
            ("hide", 3, hate),
            ("comment", 4, _flag(frame, "is_comment")),
            ("follow", 5, _flag(frame, "is_follow")),
            ("share", 6, _flag(frame, "is_forward")),
        ]
        base = frame["time_ms"].to_numpy(dtype=np.int64)
        users = frame["user_id"].astype(str).to_numpy()
        videos = frame["video_id"].astype(str).to_numpy()
        watch = frame["play_time_ms"].fillna(0).astype(np.int64).to_numpy() if play.any() else None
        duration = (
            frame["duration_ms"].fillna(0).astype(np.int64).to_numpy()
            if "duration_ms" in frame
            else np.zeros(n, dtype=np.int64)
        )

        def extra(kind: str, r: int, _video: str) -> dict[str, object]:
            d = int(duration[r])
            if kind == "play":
                return {"watch_ms": int(watch[r]), "duration_ms": d if d > 0 else None}
            if kind == "impression":  # the video's length is known when it is shown
                return {"position": 0, "duration_ms": d if d > 0 else None}
            return {}

        yield from self._batches(
            expand_rows(base, parts),
            [kind for kind, _, _ in parts],
            users,
            videos,
            lambda r, u, v: f"kr:{u}:{v}:{int(base[r])}",
            extra,
        )
