"""A plain pandas computation of the window statistics, the ground truth the stats job must match.

It applies the sawtooth definition in `streams.tiles` directly to a table of events: a window
(length w, hop h) as of W sums the events whose tile floor(ts/h) lies in (floor(W/h) - w/h,
floor(W/h)]. Late events (older than their partition's running maximum minus the lateness) are
excluded, as the job sends them to the DLQ.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.schema import FeatureConfig, derive
from features.windows import (
    COMPLETION_FRACTION,
    METRICS,
    TYPE_METRIC,
    WINDOWS,
    expected_completion_milli,
)
from streams.events import Event


def events_frame(events: list[Event]) -> pd.DataFrame:
    """Tabulate events: ts, type, user_id, note_id, watch_ms, completed."""
    frame = pd.DataFrame(
        {
            "ts": [e.ts for e in events],
            "type": [e.type for e in events],
            "user_id": [e.user_id for e in events],
            "note_id": [e.note_id for e in events],
            "watch_ms": [e.watch_ms or 0 for e in events],
            "duration_ms": [e.duration_ms or 0 for e in events],
        }
    )
    play = frame.type == "play"
    duration = frame.duration_ms.where(play, 0).to_numpy()
    frame["completed"] = (duration > 0) & (frame.watch_ms >= COMPLETION_FRACTION * duration)
    frame["expected_milli"] = expected_completion_milli(duration)
    return frame


def reference_counts(frame: pd.DataFrame, key: str, as_of: int) -> pd.DataFrame:
    """Return one row per entity of `key` with `<metric>_<window>` counts as of `as_of`."""
    columns = {}
    for w in WINDOWS:
        last = as_of // w.hop_ms
        tile = frame.ts // w.hop_ms
        inside = frame[(tile > last - w.tiles) & (tile <= last)]
        grouped = inside.groupby(key)
        for kind, index in TYPE_METRIC.items():
            metric = METRICS[index]
            columns[f"{metric}_{w.name}"] = (inside.type == kind).groupby(inside[key]).sum()
        columns[f"watch_ms_{w.name}"] = grouped.watch_ms.sum()
        columns[f"completions_{w.name}"] = grouped.completed.sum()
        columns[f"expected_completions_milli_{w.name}"] = grouped.expected_milli.sum()
    out = pd.DataFrame(columns).reindex(frame[key].unique()).fillna(0).astype(np.int64)
    return out.sort_index()


def expected_features(events: list, view: str) -> pd.DataFrame:
    """Ground truth: pandas window counts plus the derived features, as of the last event."""
    key = "user_id" if view == "user_stats" else "note_id"
    frame = events_frame(events)
    as_of = int(frame.ts.max())
    counts = reference_counts(frame, key, as_of)
    arrays = {
        w.name: counts[[f"{m}_{w.name}" for m in METRICS]].to_numpy(dtype=np.int64) for w in WINDOWS
    }
    derived = derive(view, arrays, FeatureConfig())
    return pd.DataFrame({k: np.asarray(v) for k, v in derived.items()}, index=counts.index)
