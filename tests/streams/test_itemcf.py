"""The co-click job: its stored ItemCF and Swing lists equal the pandas oracle's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import scipy.sparse as sp
from bytewax.testing import TestingSink, TestingSource, run_main

from features.neighbours import NeighbourStore
from infra.config import Settings
from streams.cf_reference import expected_neighbours
from streams.config import CoClickConfig
from streams.events import Event
from streams.itemcf import (
    ClickGraph,
    CoClickLogic,
    CoClickState,
    NeighbourSink,
    Part,
    Refresh,
    build_flow,
    changed_lists,
    itemcf_rows,
    rows_top_k,
    swing_rows,
    top_k,
)
from streams.sources.synthetic import SyntheticConfig
from tests.streams.helpers import cli_env, events_fixture, raw_batches, replayed_topic, run_to_end

WORLD = SyntheticConfig(users=60, notes=80, categories=4, authors=10, seed=3)
events = events_fixture(WORLD, 12_000)
CONFIG = CoClickConfig(top_k=10, user_window=8, alpha=1.0, refresh_s=0.0, swing_users=6)


def _stored(refreshes: list[Refresh]) -> dict[str, dict[str, tuple[list[str], list[float]]]]:
    """kind -> note -> last list written (empty ones dropped), as the store would hold."""
    out: dict[str, dict] = {"itemcf": {}, "swing": {}}
    for r in refreshes:
        for kind, rows in r.rows.items():
            out[kind].update(rows)
    return {k: {n: v for n, v in rows.items() if v[0]} for k, rows in out.items()}


def test_flow_equals_oracle_after_every_batch_coalesced(events: list[Event]) -> None:
    """Refreshed after every batch (refresh_s 0): only the changed notes are recomputed, and the
    lists kept equal the oracle's on the whole input; a repeated click event changes nothing."""
    assert sum(e.type == "click" for e in events) > 300
    # the first 200 events again at the end: duplicates, dead-lettered
    batches = raw_batches(events, 3, 80) + raw_batches(events[:200], 3, 80, first_offset=10**6)
    out: list[Refresh] = []
    run_main(
        build_flow(TestingSource(batches), TestingSink(out), TestingSink([]),
                   CONFIG, recoverable=False)
    )  # fmt: skip
    assert len(out) > 5
    expected = expected_neighbours(
        events, CONFIG.user_window, CONFIG.top_k, CONFIG.alpha, CONFIG.swing_users
    )
    got = _stored(out)
    for kind in ("itemcf", "swing"):
        assert expected[kind], kind
        assert got[kind].keys() == expected[kind].keys(), kind
        for note, (ids, scores) in expected[kind].items():
            assert got[kind][note][0] == ids, (kind, note)
            assert got[kind][note][1] == pytest.approx(scores, abs=1e-8), (kind, note)
    # the later refreshes recomputed only some notes
    assert min(len(r.rows.get("swing", {})) for r in out[1:]) < len(expected["swing"])


def test_changed_lists_equal_a_full_recomputation_at_every_refresh(events: list[Event]) -> None:
    """Refreshed after every few clicks, the lists kept from the changed notes alone equal every
    note's lists recomputed from scratch, at each refresh (short lists: most are full, so the
    k-th selection and its ties decide)."""
    config = CoClickConfig(top_k=4, user_window=8, swing_users=6)
    graph = ClickGraph(config.user_window)
    kept: dict[str, dict] = {"itemcf": {}, "swing": {}}
    clicks = [e for e in events if e.type == "click"]
    lo = 0
    for size in [1, 3, 11, 40] * 100:
        if lo >= len(clicks):
            break
        for e in clicks[lo : lo + size]:
            graph.click(e.user_id, e.note_id, e.ts)
        lo += size
        changed = changed_lists(graph, config)
        for kind, rows in changed.items():
            kept[kind].update(rows)
        notes, col, r = graph.matrix()
        want = itemcf_rows(notes, col, r, notes, config.top_k)
        assert {n: v for n, v in kept["itemcf"].items() if v[0]} == {
            n: v for n, v in want.items() if v[0]
        }
        swing = swing_rows(graph, notes, col, r, notes, 4, config.alpha, config.swing_users)
        assert {n: v for n, v in kept["swing"].items() if v[0]} == {
            n: v for n, v in swing.items() if v[0]
        }
    assert lo >= len(clicks) > 300


def test_rows_top_k_equals_the_one_row_top_k_with_ties() -> None:
    """The vectorised top-k of every row (k-th selection first) equals `top_k` row by row, own
    note left out, on scores with many ties at the k-th."""
    rng = np.random.default_rng(5)
    sims = sp.random(300, 120, density=0.6, random_state=rng, format="csr")
    sims.data = rng.integers(0, 6, len(sims.data)) / 3.0  # few distinct values, zeros too
    names = np.array([f"n{j:03d}" for j in rng.permutation(120)], dtype=object)
    order = np.argsort(np.argsort(names))
    own = rng.integers(0, 120, 300)
    for k in (1, 7, 50, 200):
        got = rows_top_k(sims, own, names, order, k)
        for i, row in enumerate(got):
            scores = sims[i].toarray().ravel()
            scores[own[i]] = 0.0
            assert row == top_k(names, scores, k), (k, i)


def test_window_evicts_and_swing_penalises_overlap() -> None:
    """Two users sharing many notes add less to a pair than two users sharing only that pair;
    a user's oldest note beyond the window leaves their co-clicks."""
    evs: list[Event] = []

    def click(user: str, note: str) -> None:
        evs.append(Event(f"e{len(evs)}", 1_700_000_000_000 + len(evs), user, note, "click"))

    for u in ("a", "b"):  # a and b share x, y and five more notes
        for n in ("x", "y", "p1", "p2", "p3", "p4", "p5"):
            click(u, n)
    for u in ("c", "d"):  # c and d share only x and z
        for n in ("x", "z"):
            click(u, n)
    out: list[Refresh] = []
    run_main(build_flow(TestingSource(raw_batches(evs, 1, 100)), TestingSink(out),
                        TestingSink([]), CONFIG, recoverable=False))  # fmt: skip
    swing = _stored(out)["swing"]
    score = dict(zip(*swing["x"], strict=True))
    assert score["z"] == pytest.approx(1 / (1 + 2))
    assert score["y"] == pytest.approx(1 / (1 + 7))
    # window 8: a ninth note of user a evicts "x" from a's notes
    click("a", "q0")
    click("a", "q1")
    out2: list[Refresh] = []
    run_main(build_flow(TestingSource(raw_batches(evs, 1, 100)), TestingSink(out2),
                        TestingSink([]), CONFIG, recoverable=False))  # fmt: skip
    itemcf = _stored(out2)["itemcf"]
    expected = expected_neighbours(evs, 8, 10, 1.0)["itemcf"]
    assert itemcf == {n: (ids, pytest.approx(s)) for n, (ids, s) in expected.items()}
    assert "x" not in dict(zip(*itemcf["q0"], strict=True))


def test_a_new_note_is_written_to_the_fresh_index_without_waiting_for_a_slow_recomputation():
    """The fresh and author changes go out `refresh_s` after they happen even when the last
    recomputation stretched its interval; the lists and the mark wait for the recomputation."""
    logic = CoClickLogic(CoClickState(ClickGraph(CONFIG.user_window)), CONFIG, recoverable=False)
    logic._last_s = 3_600.0  # the last recomputation took an hour: the next is 2 hours away
    t = 1_700_000_000_000
    seen = [("n1", t - 10, True, "a1", "c1"), ("n1", t, False, "", "")]
    (first,), _ = logic.on_item(Part([("u1", "n1", t)], seen, t))
    assert first.rows == {} and first.hwm is None and first.stale == []
    assert [(f.note_id, f.first_seen_ms, f.impressions) for f in first.fresh] == [("n1", t - 10, 1)]
    assert first.authors == {"a1": {"n1": t - 10}}
    later = Part([("u2", "n1", t + 5)], [("n2", t + 1, True, "", "c2")], t + 5)
    (second,), _ = logic.on_item(later)
    assert [f.note_id for f in second.fresh] == ["n2"] and second.rows == {}
    assert logic.notify_at() is not None  # the clicks still wait for their recomputation
    (final,), _ = logic.on_eof()
    assert "n1" in final.rows["itemcf"]  # recomputed at last
    assert final.hwm == t + 5 and final.fresh == [] and final.authors == {}


@pytest.fixture
def project(redis_client: redis.Redis) -> Iterator[str]:
    """A fresh key prefix, its keys deleted afterwards."""
    name = f"test-cf-{uuid.uuid4().hex[:8]}"
    yield name
    keys = list(redis_client.scan_iter(match=f"{name}:*", count=1_000))
    if keys:
        redis_client.delete(*keys)


def test_sink_stores_the_lists_in_redis(
    events: list[Event], redis_url: str, redis_client: redis.Redis, project: str
) -> None:
    """The Redis sink's lists, author and fresh indexes, read back through the store."""
    run_main(
        build_flow(TestingSource(raw_batches(events, 3, 200)),
                   NeighbourSink(redis_url, project, CONFIG.per_author), TestingSink([]),
                   CONFIG, recoverable=False)
    )  # fmt: skip
    expected = expected_neighbours(
        events, CONFIG.user_window, CONFIG.top_k, CONFIG.alpha, CONFIG.swing_users
    )
    store = NeighbourStore(redis_client, project)
    for kind in ("itemcf", "swing"):
        notes = sorted(expected[kind])
        for note, (ids, scores) in zip(notes, store.read(kind, notes), strict=True):
            assert ids == expected[kind][note][0]
            assert scores == pytest.approx(expected[kind][note][1], abs=1e-8)
    assert store.as_of() == max(e.ts for e in events)
    author = next(e.author_id for e in events if e.author_id)
    newest = store.author_notes([author], 5)[0]
    firsts: dict[str, int] = {}
    for e in events:
        if e.author_id == author:
            firsts.setdefault(e.note_id, e.ts)
    want = sorted(firsts, key=lambda n: -firsts[n])[:5]
    assert [n for n, _ in newest] == want
    fresh = store.fresh(1_000)
    shown: dict[str, int] = {}
    for e in events:
        shown[e.note_id] = shown.get(e.note_id, 0) + (e.type == "impression")
    assert fresh, "some notes have fewer impressions than trust_impressions"
    assert {f.note_id for f in fresh} == {
        n for n, c in shown.items() if c < CONFIG.trust_impressions
    }
    assert all(f.impressions == shown[f.note_id] for f in fresh)


def test_the_job_on_kafka_stores_the_oracles_lists(
    events: list[Event],
    bootstrap: str,
    settings: Settings,
    redis_url: str,
    redis_client: redis.Redis,
    topic_name: str,
    tmp_path: Path,
) -> None:
    """`streamrec run itemcf --until-end` over a real topic: the stored lists are the oracle's."""
    config, project = replayed_topic(bootstrap, topic_name, tmp_path, events)
    run_to_end(["run", "itemcf", "--config", str(config)], cli_env(settings.data_dir, redis_url))
    defaults = CoClickConfig()
    expected = expected_neighbours(
        events, defaults.user_window, defaults.top_k, defaults.alpha, defaults.swing_users
    )
    store = NeighbourStore(redis_client, project)
    for kind in ("itemcf", "swing"):
        notes = sorted(expected[kind])
        got = dict(zip(notes, store.read(kind, notes), strict=True))
        assert {n: ids for n, (ids, _) in got.items()} == {
            n: ids for n, (ids, _) in expected[kind].items()
        }
    assert store.as_of() == max(e.ts for e in events)
