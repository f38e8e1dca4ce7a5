"""Stats job correctness on real data: every feature read through Feast vs pandas; mismatches.

Run: `.venv/bin/python -m bench.stats_check [--synthetic-events N]`.

The KuaiRand subset (`../shared/data/kuairand-27k-likehate/`, re-sorted by time by its source)
and N synthetic events are each replayed to a fresh topic; `streamrec run stats --until-end`
(one process) reads them all and writes Feast's Redis online store; then every user's and
note's features are read through `FeatureStore.get_online_features` and compared with the
pandas computation over the same events as of the same time (`streams.reference`). Prints the
entities, features and mismatching values per view (target: 0). Then the offline log: for the
KuaiRand subset, `get_historical_features` at 3 times per entity (1 ms before its first event,
a random time, the end; plus an id without rows) against `streams.reference` as of each time,
and Feast's `materialize` of the log into an empty project against what the job wrote - both
counted as mismatching values (target: 0). Redis DB 12, flushed at the end.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import redis
import typer
from rich.console import Console
from rich.progress import track

from bench.common import DATA, bench_stack, fresh_topic
from bench.stats import BENCH_DB, CLI, _config, _env
from features.paths import DataPaths
from features.schema import ENTITY_KEY
from features.store import apply_definitions, feature_store, online_features
from streams.reference import (
    events_frame,
    expected_features,
    frame_mismatches,
    historical_mismatches,
    three_times,
)
from streams.replay import replay
from streams.sources import ListSource

console = Console()


def _read_all(store, view: str, ids: list[str], chunk: int = 1_000) -> pd.DataFrame:
    parts = []
    for lo in track(range(0, len(ids), chunk), description=f"reading {view}", console=console):
        values = online_features(store, view, ids[lo : lo + chunk])
        parts.append(pd.DataFrame(values).set_index(ENTITY_KEY[view]))
    return pd.concat(parts).loc[ids]


def check_offline(events: list, redis_url: str, project: str, data_dir: Path, tmp: Path) -> int:
    """Point-in-time joins and `materialize` of the job's offline log; print, return mismatches."""
    store = feature_store(redis_url, project, data_dir)
    frame = events_frame(events)
    fresh = f"{project}_mat"
    DataPaths(tmp / "mat").offline(fresh).parent.mkdir(parents=True, exist_ok=True)
    DataPaths(tmp / "mat").offline(fresh).symlink_to(DataPaths(data_dir).offline(project))
    target = feature_store(redis_url, fresh, tmp / "mat")
    apply_definitions(target, tmp / "mat")
    start = datetime.fromtimestamp(events[0].ts / 1000 - 86_400, UTC)
    target.materialize(start, datetime.fromtimestamp(events[-1].ts / 1000 + 1, UTC))
    total = 0
    for view in ("user_stats", "note_stats"):
        key = ENTITY_KEY[view]
        requests = three_times(frame, key, seed=13)
        unknown = pd.DataFrame({key: ["never-seen"], "as_of": [events[-1].ts]})
        requests = pd.concat([requests, unknown], ignore_index=True)
        bad_pit = 0
        for lo in range(0, len(requests), 15_000):
            bad_pit += historical_mismatches(store, frame, view, requests.iloc[lo : lo + 15_000])
        ids = list(frame[key].unique())
        job = _read_all(store, view, ids)
        mat = _read_all(target, view, ids)
        bad_mat = frame_mismatches(mat, job)
        console.print(
            f"offline {view}: get_historical_features at {len(requests):,} (entity, time) "
            f"requests, mismatches: {bad_pit}; materialize into an empty project, "
            f"{len(ids):,} entities, mismatches: {bad_mat}"
        )
        total += bad_pit + bad_mat
    return total


def check(name: str, events: list, state, redis_url: str, tmp: Path, offline: bool = False) -> int:
    """Replay `events`, run the job to the end, compare; print and return the mismatches."""
    import subprocess

    topic = fresh_topic(state.bootstrap, f"check-{name}")
    fresh_topic(state.bootstrap, f"{topic}.dlq")
    replay(ListSource(events), state.bootstrap, topic)
    config, project = _config(tmp, topic)
    done = subprocess.run(
        [str(CLI), "run", "stats", "--until-end", "--config", str(config)],
        env=_env(state.bootstrap, redis_url),
        capture_output=True,
        text=True,
        timeout=1_800,
    )
    if done.returncode != 0:
        raise SystemExit(f"stats job failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    store = feature_store(redis_url, project, tmp / "reader")
    apply_definitions(store, tmp / "reader")
    if offline:  # the job wrote its log under the data directory of bench.stats._env
        total_offline = check_offline(events, redis_url, project, tmp / "data", tmp)
    total = 0
    for view in ("user_stats", "note_stats"):
        want = expected_features(events, view)
        got = _read_all(store, view, list(want.index))
        missing = int(got.isna().all(axis=1).sum())
        bad = 0
        for column in want.columns:
            g = got[column].to_numpy(dtype=np.float64)
            w = want[column].to_numpy(dtype=np.float64)
            bad += int((~np.isclose(g, w, rtol=1e-12, atol=0.0, equal_nan=False)).sum())
        console.print(
            f"{name} {view}: {len(want):,} entities x {len(want.columns)} features, "
            f"{missing} without a row, mismatches: {bad}"
        )
        total += bad + missing
    return total + (total_offline if offline else 0)


def main(synthetic_events: int = 300_000) -> None:
    """Check the KuaiRand subset and a synthetic stream; exit 1 on any mismatch."""
    from streams.sources.kuairand import KuaiRandSource
    from streams.sources.synthetic import SyntheticSource

    sources = {
        "kuairand": KuaiRandSource(
            DATA / "kuairand-27k-likehate" / "processed_standard_kcore_15.tsv"
        ),
        "synthetic": SyntheticSource(limit=synthetic_events),
    }
    with bench_stack() as state, tempfile.TemporaryDirectory() as tmp_dir:
        redis_url = state.redis_url.rsplit("/", 1)[0] + f"/{BENCH_DB}"
        try:
            total = 0
            for name, source in sources.items():
                events = [e for b in source.batches() for e in b]
                console.print(f"{name}: {len(events):,} events")
                total += check(
                    name, events, state, redis_url, Path(tmp_dir), offline=name == "kuairand"
                )
        finally:
            redis.Redis.from_url(redis_url).flushdb()
    console.print(f"total mismatches: {total}")
    if total:
        raise SystemExit(1)


if __name__ == "__main__":
    typer.run(main)
