"""A plain pandas computation of ItemCF and Swing: the ground truth the co-click job must match.

It applies the formulas of `streams.itemcf` to a table of events with joins and group-bys,
nothing shared with the job but the rounding and tie-break of a top-k list: each user keeps
the last `user_window` distinct notes they clicked (by their latest click, in arrival order),
repeated event ids counted once; Swing sums over the pairs of each note's `swing_users` users
who clicked it last (by event time, then user id).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from streams.events import Event

DIGITS = 9


def kept_clicks(events: list[Event], user_window: int) -> pd.DataFrame:
    """(user, note, seq and ts of the latest click) of each user's last `user_window` distinct
    clicked notes."""
    frame = pd.DataFrame(
        {
            "event_id": [e.event_id for e in events],
            "type": [e.type for e in events],
            "user": [e.user_id for e in events],
            "note": [e.note_id for e in events],
            "ts": [e.ts for e in events],
        }
    )
    frame = frame[~frame.event_id.duplicated()]
    clicks = frame[frame.type == "click"].reset_index(drop=True)
    clicks["seq"] = np.arange(len(clicks))
    latest = clicks.groupby(["user", "note"], as_index=False).agg(
        seq=("seq", "max"), ts=("ts", "max")
    )
    latest["rank"] = latest.groupby("user").seq.rank(ascending=False, method="first")
    return latest[latest["rank"] <= user_window][["user", "note", "ts"]].reset_index(drop=True)


def _lists(pairs: pd.DataFrame, k: int) -> dict[str, tuple[list[str], list[float]]]:
    """note -> its top `k` (rounded score desc, then id) from columns i, j, score."""
    pairs = pairs.assign(score=pairs.score.round(DIGITS))
    pairs = pairs[pairs.score > 0].sort_values(["i", "score", "j"], ascending=[True, False, True])
    out = {}
    for note, group in pairs.groupby("i", sort=False):
        top = group.head(k)
        out[note] = (top.j.tolist(), top.score.tolist())
    return out


def expected_itemcf(kept: pd.DataFrame, k: int) -> dict[str, tuple[list[str], list[float]]]:
    """ItemCF-IUF top-`k` neighbours of every note with any."""
    activity = kept.groupby("user").size().rename("n_u")
    clickers = kept.groupby("note").size()
    both = kept.merge(kept, on="user", suffixes=("_i", "_j"))
    both = both[both.note_i != both.note_j].join(activity, on="user")
    both["w"] = 1.0 / np.log1p(both.n_u)
    co = both.groupby(["note_i", "note_j"], as_index=False).w.sum()
    co["score"] = co.w / np.sqrt(
        clickers.loc[co.note_i].to_numpy() * clickers.loc[co.note_j].to_numpy()
    )
    return _lists(co.rename(columns={"note_i": "i", "note_j": "j"}), k)


def _user_pairs(kept: pd.DataFrame) -> pd.DataFrame:
    """(user_u, user_v, note) for each unordered pair of users who both kept the note."""
    pairs = kept[["user", "note"]].merge(kept[["user", "note"]], on="note", suffixes=("_u", "_v"))
    return pairs[pairs.user_u < pairs.user_v]


def expected_swing(
    kept: pd.DataFrame, k: int, alpha: float, swing_users: int
) -> dict[str, tuple[list[str], list[float]]]:
    """Swing top-`k` neighbours of every note with any."""
    everyone = _user_pairs(kept)
    overlap = everyone.groupby(["user_u", "user_v"]).size().rename("overlap")
    by_time = kept.sort_values(["note", "ts", "user"], ascending=[True, False, False])
    recent = by_time.groupby("note").head(swing_users)  # each note's last clickers
    rows = _user_pairs(recent).join(overlap, on=["user_u", "user_v"])  # the pairs of row i
    both = rows.merge(everyone, on=["user_u", "user_v"], suffixes=("_i", "_j"))
    both = both[both.note_i != both.note_j]
    both["w"] = 1.0 / (alpha + both.overlap)
    sw = both.groupby(["note_i", "note_j"], as_index=False).w.sum()
    return _lists(sw.rename(columns={"note_i": "i", "note_j": "j", "w": "score"}), k)


def expected_neighbours(
    events: list[Event], user_window: int, k: int, alpha: float, swing_users: int = 100
) -> dict[str, dict[str, tuple[list[str], list[float]]]]:
    """kind ("itemcf", "swing") -> note -> (neighbour ids best first, rounded scores)."""
    kept = kept_clicks(events, user_window)
    return {
        "itemcf": expected_itemcf(kept, k),
        "swing": expected_swing(kept, k, alpha, swing_users),
    }
