"""bench.pipeline: the quota merge's fast recall and the per-request point-in-time inputs."""

from __future__ import annotations

import numpy as np

from bench.baselines import HOUR_MS, RecentPopularity
from bench.pipeline import (
    CONFIG,
    CoClicks,
    _learn,
    activity_bucket,
    quota_hit,
    quotas,
    score_batches,
)
from features.samples import STAT_FEATURES
from serving.channels import Candidates, merge_found
from tests.test_bench_baselines import T0, make_cols


def _lists(rng: np.random.Generator, channels: int, depth: int, notes: int) -> list[Candidates]:
    return [
        Candidates(
            f"c{c}",
            [f"n{j}" for j in rng.choice(notes, depth, replace=False)],
            np.sort(rng.random(depth))[::-1],
        )
        for c in range(channels)
    ]


def test_quota_hit_equals_membership_in_merge_found() -> None:
    """For random overlapping lists, shares and targets, `quota_hit` answers whether the
    target is among `merge_found`'s notes of each list's first k (the bench's slow path)."""
    rng = np.random.default_rng(3)
    names = ["c0", "c1", "c2", "c3"]
    checked = hits = 0
    for _ in range(200):
        lists = _lists(rng, len(names), int(rng.integers(5, 60)), 80)
        k = int(rng.integers(1, 70))
        raw = rng.dirichlet(np.ones(len(names)))
        at = quotas(k, names, dict(zip(names, raw.round(1).tolist(), strict=True)))
        merged = set(merge_found([c.top(k) for c in lists], at, k).ids)
        for target in [f"n{j}" for j in range(80)]:
            found = quota_hit(lists, at, k, target)
            assert found == (target in merged)
            checked += 1
            hits += found
    assert 0 < hits < checked


class _Recorder:
    """A retriever stand-in: every note scores the same; records the stats it was given."""

    def __init__(self, notes: list[str]) -> None:
        self.notes = notes
        self.stats: list[np.ndarray] = []

    def user_vectors(self, users: list[str], stats: np.ndarray) -> np.ndarray:
        self.stats.append(stats.copy())
        return np.ones((len(users), 2))

    def item_vectors(self) -> tuple[list[str], np.ndarray]:
        return self.notes, np.ones((len(self.notes), 2))

    def train_step(self, cols: object, optimizer: None) -> None:
        """Nothing to learn."""


def test_each_click_is_a_request_with_its_own_point_in_time_inputs() -> None:
    """A user clicking a, b, c in one batch makes three requests: each reads its own sample's
    window counts, and the notes clicked earlier in the batch are out of every channel's list
    and count in the request's activity (they were not, when one request per user and batch
    read the first click's counts)."""
    warm = make_cols(["v", "v", "w"], ["a", "b", "c"], [1, 1, 1])
    stats = np.arange(3 * len(STAT_FEATURES), dtype=np.float32).reshape(3, -1)
    batch = make_cols(
        ["u", "u", "u"],
        ["a", "b", "c"],
        [1, 1, 1],
        ts=[T0 + 10_000 + i for i in range(3)],
        stats=stats,
    )
    state = (CoClicks(CONFIG), RecentPopularity(("click",), HOUR_MS), {}, {})
    _learn(warm, *state)
    retriever = _Recorder(["a", "b", "c", "d"])
    names = ["itemcf", "popular", "two_tower"]
    [scored] = list(score_batches([batch], state, retriever, names, True, lambda: None))
    np.testing.assert_array_equal(retriever.stats[0], stats)
    assert [n for _, n in scored.clicks] == ["a", "b", "c"]
    for r, earlier in zip(sorted(scored.lists), [set(), {"a"}, {"a", "b"}], strict=True):
        for cand in scored.lists[r]:
            assert not earlier & set(cand.ids)
        assert scored.activity[r] == activity_bucket(len(earlier))
    itemcf = [scored.lists[r][0].ids for r in sorted(scored.lists)]
    assert itemcf[0] == [] and "b" in itemcf[1]  # a's co-clicked note, from the batch's a


def test_clicks_at_the_same_timestamp_do_not_see_each_other() -> None:
    """Two clicks of one user in the same millisecond are one moment: neither is in the other's
    history or exclusions; a later click sees both."""
    warm = make_cols(["v", "v"], ["a", "b"], [1, 1])
    ts = [T0 + 10_000, T0 + 10_000, T0 + 11_000]
    batch = make_cols(["u", "u", "u"], ["a", "b", "c"], [1, 1, 1], ts=ts)
    state = (CoClicks(CONFIG), RecentPopularity(("click",), HOUR_MS), {}, {})
    _learn(warm, *state)
    [scored] = list(score_batches([batch], state, None, ["popular"], True, lambda: None))
    first, second, third = (scored.lists[r][0].ids for r in sorted(scored.lists))
    assert {"a", "b"} <= set(first) and {"a", "b"} <= set(second)
    assert not {"a", "b"} & set(third)
    assert [scored.activity[r] for r in sorted(scored.lists)] == [0, 0, activity_bucket(2)]
