"""The experiment statistics: delta-method errors, lifts, SRM, the MDE calculator, the report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from streams.experiment_stats import (
    METRICS,
    capped,
    compare,
    mde,
    ratio_estimate,
    report,
    sample_ratio,
    users_per_arm,
)


def _users(rng: np.random.Generator, n: int, lift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-user (clicks, impressions) with heterogeneous users (the variance the delta method
    must see)."""
    impressions = rng.geometric(0.05, n)
    ctr = rng.beta(2, 14, n) * (1 + lift)
    return rng.binomial(impressions, ctr), impressions


def test_delta_method_error_matches_the_spread_over_repeated_experiments() -> None:
    rng = np.random.default_rng(3)
    values, errors, naive = [], [], []
    for _ in range(400):
        clicks, impressions = _users(rng, 2_000)
        e = ratio_estimate(clicks, impressions)
        values.append(e.value)
        errors.append(e.se)
        p = clicks.sum() / impressions.sum()
        naive.append(np.sqrt(p * (1 - p) / impressions.sum()))  # impressions as independent
    spread = np.std(values, ddof=1)
    assert np.mean(errors) == pytest.approx(spread, rel=0.12)
    assert np.mean(naive) < 0.8 * spread  # the binomial error understates it


def test_lift_interval_and_p_value() -> None:
    rng = np.random.default_rng(4)
    control = ratio_estimate(*_users(rng, 40_000))
    treated = ratio_estimate(*_users(rng, 40_000, lift=0.1))
    cmp = compare(treated, control, level=0.999)  # fixed seed; a 1-in-1000 miss otherwise
    assert cmp.lift_low < 0.1 < cmp.lift_high and cmp.lift_low > 0
    assert cmp.p_value < 1e-6
    same = compare(ratio_estimate(*_users(rng, 40_000)), control, level=0.999)
    assert same.lift_low < 0 < same.lift_high and same.p_value > 0.001


def test_sample_ratio_mismatch_is_flagged_and_chance_is_not() -> None:
    shares = {"a": 0.5, "b": 0.5}
    assert sample_ratio({"a": 5_300, "b": 4_700}, shares).mismatch
    ok = sample_ratio({"a": 5_030, "b": 4_970}, shares)
    assert not ok.mismatch and ok.expected == {"a": 5_000.0, "b": 5_000.0}
    uneven = sample_ratio({"old": 6_700, "new": 3_300}, {"old": 2 / 3, "new": 1 / 3})
    assert not uneven.mismatch


def test_mde_and_users_per_arm_are_inverse() -> None:
    need = users_per_arm(0.1, 0.3, 0.05)
    assert mde(0.1, 0.3, need) <= 0.05 < mde(0.1, 0.3, need - 50)
    assert users_per_arm(0.1, 0.3, 0.025) == pytest.approx(4 * need, rel=0.01)


def test_cap_weighs_heavy_users_down_without_looking_at_arms() -> None:
    users = pd.DataFrame(
        {"arm": ["a"] * 99 + ["b"], "impressions": [10] * 99 + [10_000], "clicks": [1] * 100}
    )
    w = capped(users, 0.95).weight.to_numpy()
    assert (w[:99] == 1).all() and w[99] == pytest.approx(10 / 10_000)
    swapped = capped(users.assign(arm=users.arm[::-1].to_numpy()), 0.95).weight.to_numpy()
    assert (swapped == w).all()
    assert (capped(users, None).weight == 1).all()


def test_report_over_a_log() -> None:
    rng = np.random.default_rng(5)
    rows = []
    for arm, lift in (("control", 0.0), ("treatment", 0.2)):
        for day in (20_000, 20_001):
            clicks, impressions = _users(rng, 3_000, lift)
            rows.append(
                pd.DataFrame(
                    {
                        "experiment": "e",
                        "arm": arm,
                        "day": day,
                        "user_id": [f"{arm}{i}" for i in range(3_000)],
                        "impressions": impressions,
                        "clicks": clicks,
                        "likes": clicks // 2,
                        "plays": clicks,
                        "watch_ms": clicks * 30_000,
                        "completions": clicks // 3,
                    }
                )
            )
    rep = report(pd.concat(rows), "e", "control", {"control": 0.5, "treatment": 0.5})
    assert set(rep.estimates) == set(METRICS) and rep.days == [20_000, 20_001]
    ctr = rep.comparisons["ctr"]["treatment"]
    assert ctr.lift_low < 0.2 + 0.05 and ctr.lift_high > 0.2 - 0.05 and ctr.p_value < 1e-6
    assert rep.estimates["ctr"]["control"].users == 3_000
    assert not rep.srm.mismatch
    daily = rep.daily["treatment"]
    assert list(daily.day) == [20_000, 20_001] and (daily.low < daily.lift).all()
