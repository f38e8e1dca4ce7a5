"""A plain pandas computation of the window statistics, the ground truth the stats job must match.

It applies the sawtooth definition in `streams.tiles` directly to a table of events: a window
(length w, hop h) as of W sums the events whose tile floor(ts/h) lies in (floor(W/h) - w/h,
floor(W/h)]. Late events (older than their partition's running maximum minus the lateness) are
excluded, as the job sends them to the DLQ, and so are repeats of an event id (`duplicate`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.schema import ENTITY_KEY, FeatureConfig, derive, feature_types
from features.windows import (
    COMPLETION_FRACTION,
    METRICS,
    TYPE_METRIC,
    WINDOWS,
    expected_completion_milli,
)
from streams.events import Event


def events_frame(events: list[Event]) -> pd.DataFrame:
    """Tabulate events: ts, type, user_id, note_id, watch_ms, completed; an event id seen before
    is dropped (the stats job counts a duplicate once)."""
    frame = pd.DataFrame(
        {
            "event_id": [e.event_id for e in events],
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
    return frame[~frame.event_id.duplicated()].reset_index(drop=True)


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


def features_of(view: str, counts: pd.DataFrame) -> pd.DataFrame:
    """The derived features of `view` from `reference_counts`' window counts (same index)."""
    arrays = {
        w.name: counts[[f"{m}_{w.name}" for m in METRICS]].to_numpy(dtype=np.int64) for w in WINDOWS
    }
    derived = derive(view, arrays, FeatureConfig())
    return pd.DataFrame({k: np.asarray(v) for k, v in derived.items()}, index=counts.index)


def expected_features(events: list, view: str) -> pd.DataFrame:
    """Ground truth: pandas window counts plus the derived features, as of the last event."""
    key = "user_id" if view == "user_stats" else "note_id"
    frame = events_frame(events)
    return features_of(view, reference_counts(frame, key, int(frame.ts.max())))


def features_as_of(frame: pd.DataFrame, view: str, requests: pd.DataFrame) -> pd.DataFrame:
    """Ground truth of a point-in-time join: the features of `view` for each request.

    Args:
        frame: `events_frame` of the events.
        requests: columns `<entity key>` and `as_of` (epoch ms), one row per request.

    Returns one row per request (same index): the features over the entity's events with
    ts <= as_of, each window as of `as_of` (the same sawtooth as `reference_counts`: events
    with ts in [(floor(as_of/h) - w/h + 1) h, as_of]); all NaN where the entity has no event at
    or before `as_of` (a point-in-time join finds no row for it). Vectorised with per-entity
    prefix sums, so any number of distinct times costs one sort.
    """
    key = "user_id" if view == "user_stats" else "note_id"
    codes, uniques = pd.factorize(frame[key])
    ts = frame.ts.to_numpy(np.int64)
    values = np.zeros((len(frame), len(METRICS)), dtype=np.int64)
    for kind, index in TYPE_METRIC.items():
        values[:, index] = (frame.type == kind).to_numpy()
    values[:, METRICS.index("watch_ms")] = frame.watch_ms.to_numpy(np.int64)
    values[:, METRICS.index("completions")] = frame.completed.to_numpy(np.int64)
    values[:, METRICS.index("expected_completions_milli")] = frame.expected_milli.to_numpy(np.int64)
    base = int(ts.min()) - 1 if len(ts) else 0
    span = 1 << 42  # > any time offset used here (~139 years in ms)
    composite = codes.astype(np.int64) * span + (ts - base)
    order = np.argsort(composite, kind="stable")
    composite = composite[order]
    prefix = np.vstack([np.zeros((1, len(METRICS)), np.int64), np.cumsum(values[order], axis=0)])

    req_code = pd.Index(uniques).get_indexer(requests[key].to_numpy())
    as_of = requests["as_of"].to_numpy(np.int64)
    known = req_code >= 0
    code = np.where(known, req_code, 0).astype(np.int64) * span
    offset = np.clip(as_of - base, 0, span - 1)

    def upto(t_offset: np.ndarray, side: str) -> np.ndarray:
        return np.searchsorted(composite, code + np.clip(t_offset, 0, span - 1), side=side)

    end = upto(offset, "right")  # events with ts <= as_of
    first = upto(np.zeros_like(offset), "left")  # the entity's first event
    has_row = known & (end > first)
    counts = {}
    for w in WINDOWS:
        lo = (as_of // w.hop_ms - w.tiles + 1) * w.hop_ms  # oldest time inside the window
        start = np.maximum(upto(lo - base, "left"), first)
        counts[w.name] = prefix[end] - prefix[np.minimum(start, end)]
    derived = derive(view, counts, FeatureConfig())
    out = pd.DataFrame({k: np.asarray(v, dtype=np.float64) for k, v in derived.items()})
    out.index = requests.index
    out.loc[~has_row, :] = np.nan
    return out


def three_times(frame: pd.DataFrame, key: str, seed: int = 0) -> pd.DataFrame:
    """Point-in-time requests (`key`, `as_of`), three per entity of `frame` (`events_frame`):
    1 ms before its first event, a random time within the stream, and the stream's end."""
    first = frame.groupby(key).ts.min()
    rng = np.random.default_rng(seed)
    lo, hi = int(frame.ts.min()), int(frame.ts.max())
    ids = list(first.index)
    mid = rng.integers(lo, hi + 1, len(ids))
    return pd.DataFrame(
        {key: ids * 3, "as_of": np.r_[first.to_numpy() - 1, mid, np.full(len(ids), hi)]}
    )


def historical_mismatches(store, frame: pd.DataFrame, view: str, requests: pd.DataFrame) -> int:
    """Values of `store.get_historical_features` for `requests` (`three_times`) that differ
    from `features_as_of` (a null where the truth has a value counts, and the reverse)."""
    key = ENTITY_KEY[view]
    entity_df = pd.DataFrame(
        {
            key: requests[key].to_numpy(),
            "event_timestamp": pd.to_datetime(requests["as_of"].to_numpy(), unit="ms", utc=True),
            "request": np.arange(len(requests)),
        }
    )
    refs = [f"{view}:{name}" for name in feature_types(view)]
    got = store.get_historical_features(entity_df=entity_df, features=refs).to_df()
    got = got.set_index("request").sort_index()
    return frame_mismatches(got, features_as_of(frame, view, requests.reset_index(drop=True)))


def frame_mismatches(got: pd.DataFrame, want: pd.DataFrame) -> int:
    """Values of `want` (index: entity ids) that `got` (same ids) lacks or holds differently."""
    got = got.reindex(want.index)
    bad = 0
    for column in want.columns:
        g = got[column].to_numpy(dtype=np.float64)
        w = want[column].to_numpy(dtype=np.float64)
        bad += int((~np.isclose(g, w, rtol=1e-12, atol=0.0, equal_nan=True)).sum())
    return bad


def expected_history(
    frame: pd.DataFrame, impressions: pd.DataFrame, length: int
) -> list[list[str]]:
    """Each impression's `Sample.history`: its user's distinct notes clicked strictly before it,
    most recent click first, at most `length` (ties in time in event-id order).

    Args:
        frame: `events_frame` of the events.
        impressions: rows with `user_id` and `ts`, one per impression.
    """
    clicks = frame[frame.type == "click"].sort_values(["ts", "event_id"], kind="stable")
    by_user = {u: g for u, g in clicks.groupby("user_id", sort=False)}
    out = []
    for user, ts in zip(impressions.user_id, impressions.ts, strict=True):
        past = by_user.get(user)
        if past is None:
            out.append([])
            continue
        before = past[past.ts < ts].note_id
        newest = before[~before.duplicated(keep="last")].tolist()[::-1]
        out.append(newest[:length])
    return out
