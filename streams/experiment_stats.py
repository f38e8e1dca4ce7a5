"""The statistics of an A/B experiment over per-user aggregates (the experiment log).

The unit of randomisation is the user, so every metric is computed over users: a per-user mean
(clicks per user, watch minutes per user) has the sample variance of the users' values; a ratio
metric (CTR = all clicks / all impressions, completion rate = completions / plays) is a ratio of
two per-user means, whose variance the delta method gives (Deng et al., "Applying the Delta
Method in Metric Analytics", KDD 2018): var(x̄/ȳ) ≈ (s_x² / ȳ² - 2 x̄ s_xy / ȳ³ + x̄² s_y² / ȳ⁴)
/ n. Treating impressions as independent instead would understate the variance (a user's
impressions are correlated) and flag far more than 5 % of A/A tests.

A comparison reports the relative lift T / C - 1 with a normal interval (delta method again:
var ≈ var_T / C² + T² var_C / C⁴) and the two-sided p-value of the difference T - C. The
sample-ratio-mismatch check is a chi-square test of the users per arm against the arms' bucket
shares (flagged below `SRM_ALPHA`). Heavy users are capped (`capped`) before any of this.
`users_per_arm` / `mde` plan an experiment for a metric's per-user variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from features.experiment_log import COUNTS

CAP_QUANTILE = 0.99
"""Users with more impressions than this quantile of the experiment's users count with weight
cap / impressions (their rates kept, their influence capped): heavy users (in the synthetic
world one user makes ~40 % of the requests) break the normal approximation of every estimate
otherwise (bench.experiments: A/A false positives ~50 % uncapped)."""
SRM_ALPHA = 0.001
"""A sample-ratio mismatch is flagged when the chi-square p-value is below this (the usual
threshold: an SRM is a bug, not a chance event, and the check runs on every report)."""


@dataclass(frozen=True)
class Metric:
    """A metric over users: sum(numerator) / sum(denominator), or a per-user mean."""

    name: str
    numerator: str
    denominator: str | None = None
    """None: a per-user mean of `numerator`."""
    scale: float = 1.0
    """Multiplies the value (watch ms -> minutes)."""


METRICS = {
    m.name: m
    for m in (
        Metric("ctr", "clicks", "impressions"),
        Metric("clicks_per_user", "clicks"),
        Metric("likes_per_user", "likes"),
        Metric("watch_min_per_user", "watch_ms", scale=1 / 60_000),
        Metric("completion_rate", "completions", "plays"),
        Metric("impressions_per_user", "impressions"),
    )
}
"""The metrics a report shows, by name."""


@dataclass(frozen=True)
class Estimate:
    """A metric's value in one arm, its standard error and the users it is over."""

    value: float
    se: float
    users: int

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """The normal confidence interval."""
        z = stats.norm.ppf(0.5 + level / 2)
        return self.value - z * self.se, self.value + z * self.se


@dataclass(frozen=True)
class Comparison:
    """Treatment against control: relative lift, its interval and the p-value."""

    treatment: Estimate
    control: Estimate
    lift: float
    """T / C - 1."""
    lift_low: float
    lift_high: float
    p_value: float
    """Two-sided, of T - C = 0."""


@dataclass(frozen=True)
class SampleRatio:
    """The sample-ratio-mismatch check of one experiment."""

    observed: dict[str, int]
    expected: dict[str, float]
    """Expected users per arm (the total split by the arms' bucket shares)."""
    chi2: float
    p_value: float

    @property
    def mismatch(self) -> bool:
        """Whether the split is off beyond chance (p < `SRM_ALPHA`)."""
        return self.p_value < SRM_ALPHA


def ratio_estimate(x: np.ndarray, y: np.ndarray) -> Estimate:
    """sum(x) / sum(y) over users, with its delta-method standard error."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    if n < 2 or y.sum() <= 0:
        return Estimate(float("nan"), float("nan"), n)
    mx, my = x.mean(), y.mean()
    cov = np.cov(x, y, ddof=1)
    var = (cov[0, 0] / my**2 - 2 * mx * cov[0, 1] / my**3 + mx**2 * cov[1, 1] / my**4) / n
    return Estimate(float(mx / my), float(math.sqrt(max(var, 0.0))), n)


def mean_estimate(x: np.ndarray) -> Estimate:
    """The mean of per-user values, with its standard error."""
    x = np.asarray(x, np.float64)
    n = len(x)
    if n < 2:
        return Estimate(float("nan"), float("nan"), n)
    return Estimate(float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)), n)


def compare(treatment: Estimate, control: Estimate, level: float = 0.95) -> Comparison:
    """Relative lift of `treatment` over `control` with its interval and p-value."""
    t, c = treatment, control
    if not (c.value and np.isfinite(c.value) and np.isfinite(t.value)):
        nan = float("nan")
        return Comparison(t, c, nan, nan, nan, nan)
    lift = t.value / c.value - 1
    se_lift = math.sqrt(t.se**2 / c.value**2 + t.value**2 * c.se**2 / c.value**4)
    z = stats.norm.ppf(0.5 + level / 2)
    se_diff = math.hypot(t.se, c.se)
    p = float(2 * stats.norm.sf(abs(t.value - c.value) / se_diff)) if se_diff > 0 else 1.0
    return Comparison(t, c, lift, lift - z * se_lift, lift + z * se_lift, p)


def estimate(users: pd.DataFrame, metric: Metric) -> Estimate:
    """`metric` over per-user totals (one row per user, the `COUNTS` columns, each user's
    counts multiplied by its `weight` when there is one)."""
    w = users.weight.to_numpy() if "weight" in users else 1.0
    if metric.denominator is None:
        e = mean_estimate(w * users[metric.numerator].to_numpy())
    else:
        e = ratio_estimate(
            w * users[metric.numerator].to_numpy(), w * users[metric.denominator].to_numpy()
        )
    return Estimate(e.value * metric.scale, e.se * metric.scale, e.users)


def sample_ratio(observed: dict[str, int], shares: dict[str, float]) -> SampleRatio:
    """Chi-square test of the users per arm against the arms' expected shares."""
    arms = list(shares)
    counts = np.array([observed.get(a, 0) for a in arms], np.float64)
    total = counts.sum()
    expected = np.array([shares[a] for a in arms]) / sum(shares.values()) * total
    if total == 0:
        return SampleRatio(dict(observed), dict(zip(arms, expected, strict=True)), 0.0, 1.0)
    chi2, p = stats.chisquare(counts, expected)
    return SampleRatio(
        {a: int(c) for a, c in zip(arms, counts, strict=True)},
        {a: float(e) for a, e in zip(arms, expected, strict=True)},
        float(chi2),
        float(p),
    )


def user_totals(log: pd.DataFrame, cap_quantile: float | None = CAP_QUANTILE) -> pd.DataFrame:
    """Per (arm, user) sums over days of an experiment's log rows (users shown something), with
    each user's `weight` (`capped`)."""
    totals = log.groupby(["arm", "user_id"], sort=True)[list(COUNTS)].sum().reset_index()
    return capped(totals[totals.impressions > 0].reset_index(drop=True), cap_quantile)


def capped(users: pd.DataFrame, cap_quantile: float | None = CAP_QUANTILE) -> pd.DataFrame:
    """`users` with column `weight`: min(1, cap / impressions), cap = the `cap_quantile` of the
    impressions of all users (every arm: the cap does not depend on the assignment); 1 for all
    when `cap_quantile` is None."""
    users = users.copy()
    imp = users.impressions.to_numpy(np.float64)
    if cap_quantile is None or not len(imp):
        users["weight"] = 1.0
    else:
        cap = float(np.quantile(imp, cap_quantile))
        users["weight"] = np.minimum(1.0, cap / np.maximum(imp, 1.0))
    return users


@dataclass(frozen=True)
class Report:
    """Everything `streamrec experiments report` shows for one experiment."""

    experiment: str
    control: str
    arms: list[str]
    estimates: dict[str, dict[str, Estimate]]
    """Metric -> arm -> estimate."""
    comparisons: dict[str, dict[str, Comparison]]
    """Metric -> treatment arm -> comparison with the control."""
    srm: SampleRatio
    days: list[int]
    daily: dict[str, pd.DataFrame]
    """Treatment arm -> per day (`day`, `lift`, `low`, `high`, `p`) of the report's first metric."""


def report(
    log: pd.DataFrame,
    experiment: str,
    control: str,
    shares: dict[str, float],
    metrics: tuple[str, ...] = tuple(METRICS),
    cap_quantile: float | None = CAP_QUANTILE,
) -> Report:
    """The report of `experiment` from its log rows (`read_experiment_log(dir, experiment)`).

    Args:
        control: the arm lifts are measured against.
        shares: arm -> expected share of users (`ExperimentsConfig.expected_shares`).
        metrics: names from `METRICS`; the first is the one tracked per day.
        cap_quantile: the heavy-user cap (`capped`); None: no cap.
    """
    users = user_totals(log, cap_quantile)
    arms = list(shares)
    by_arm = {a: users[users.arm == a] for a in arms}
    estimates = {m: {a: estimate(by_arm[a], METRICS[m]) for a in arms} for m in metrics}
    comparisons = {
        m: {a: compare(estimates[m][a], estimates[m][control]) for a in arms if a != control}
        for m in metrics
    }
    srm = sample_ratio({a: len(by_arm[a]) for a in arms}, shares)
    days = sorted(int(d) for d in log.day.unique())
    daily = {
        a: _daily(log, a, control, METRICS[metrics[0]], days, cap_quantile)
        for a in arms
        if a != control
    }
    return Report(experiment, control, arms, estimates, comparisons, srm, days, daily)


def _daily(
    log: pd.DataFrame,
    arm: str,
    control: str,
    metric: Metric,
    days: list[int],
    cap_quantile: float | None,
) -> pd.DataFrame:
    rows = []
    for day in days:
        users = user_totals(log[log.day == day], cap_quantile)
        t = estimate(users[users.arm == arm], metric)
        c = estimate(users[users.arm == control], metric)
        cmp = compare(t, c)
        rows.append((day, cmp.lift, cmp.lift_low, cmp.lift_high, cmp.p_value))
    return pd.DataFrame(rows, columns=["day", "lift", "low", "high", "p"])


def users_per_arm(
    mean: float, sd: float, relative_mde: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Users each of two equal arms needs to detect a relative change `relative_mde` of a metric
    whose per-user standard deviation (for a ratio: the delta method's, i.e. se * sqrt(n)) is
    `sd`, with a two-sided test at `alpha` and the given power."""
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    delta = relative_mde * mean
    return math.ceil(2 * (z * sd / delta) ** 2)


def mde(mean: float, sd: float, users: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest relative change two arms of `users` users each detect (as above)."""
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return z * sd * math.sqrt(2 / users) / mean
