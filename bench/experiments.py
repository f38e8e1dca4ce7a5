"""A/A tests, a planted effect, a planted sample-ratio mismatch and layer independence.

    python -m bench.experiments [--runs 200] [--users 100000] [--out DIR]

The world is the synthetic source's (`streams.sources.synthetic`): its users' interests and
Zipf activity, its notes' categories and qualities, its click model. Each user's click
probability is the mean of the click model over 32 impressions the world draws for them (half
by interest, half by popularity, positions 0-7); in an experiment period a user makes
Poisson(activity) requests of 8 impressions and clicks Binomial(impressions, p (1 + effect)).
Users are split by the real bucketing (`features.experiments.buckets_of`, a fresh salt per run)
and every figure comes from the report's statistics (`streams.experiment_stats`: heavy users
capped, delta-method CTR, lift interval, p-value, SRM chi-square) on these per-user aggregates.
The end-to-end path (events with arms -> Kafka -> `streamrec run experiments` -> the log ->
`streamrec experiments report`) is tested in tests/streams/test_experiments_job.py.

1. A/A: `--runs` experiments on 20 buckets, the same system in both arms: the share with
   p < 0.05 (should be ~5 %), and without the heavy-user cap (the peer: what the cap fixes).
2. The MDE calculator, fed with the first A/A run's control arm, says how many users per arm a
   +5 % CTR change needs; the buckets that give that many users are taken, and `--runs`
   experiments whose treatment users click 5 % more are run: the share detected (p < 0.05;
   >= 80 % expected) and the share of lift intervals that cover +5 % (~95 % expected).
3. SRM: `--runs` A/A experiments (as wide as 2.) in which 10 % of the treatment users'
   impressions lost their arms (those users vanish from the arm): the share flagged; and the
   A/A false alarms.
4. Layers: the buckets of 200,000 users in two layers (chi-square test of independence of the
   10 x 10 table of bucket deciles) and a holdback range that never gets an arm.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from scipy import stats

from features.experiments import assign, buckets_of, parse_experiments
from features.paths import default_data_dir
from streams.experiment_stats import (
    METRICS,
    capped,
    compare,
    estimate,
    sample_ratio,
    users_per_arm,
)
from streams.sources.synthetic import SyntheticConfig, SyntheticSource

console = Console(width=120)
EFFECT = 0.05
CTR = METRICS["ctr"]


class World:
    """Per-user request rates and click probabilities of the synthetic world."""

    def __init__(self, users: int, seed: int, draws: int = 32) -> None:
        src = SyntheticSource(SyntheticConfig(users=users, seed=seed))
        c = src.config
        self.ids = [f"u{i}" for i in range(users)]
        self.rate = src.activity / src.activity.min()  # Zipf weight: 1 for the least active
        k = c.impressions_per_request
        u = np.repeat(np.arange(users), draws)
        pos = np.tile(np.arange(k), len(u) // k + 1)[: len(u)]
        note = src._sample_notes(u)
        affinity = np.log(src.interest[u, src.note_category[note]] * c.categories + 0.05)
        logit = c.click_bias + 0.8 * affinity + src.note_quality[note] - c.position_decay * pos
        self.p = (1.0 / (1.0 + np.exp(-logit))).reshape(users, draws).mean(axis=1)
        self.per_request = k


def simulate(
    world: World,
    buckets: np.ndarray,
    width: int,
    rng: np.random.Generator,
    effect: float = 0.0,
    lost: float = 0.0,
) -> pd.DataFrame:
    """Per-user aggregates of one experiment on buckets [0, width), control the lower half.

    Args:
        effect: relative click lift of the treatment users.
        lost: share of the treatment users whose impressions lost their arms (they vanish).
    """
    inside = np.flatnonzero(buckets < width)
    treated = buckets[inside] >= width // 2
    impressions = rng.poisson(world.rate[inside]) * world.per_request
    p = world.p[inside] * np.where(treated, 1.0 + effect, 1.0)
    clicks = rng.binomial(impressions, np.minimum(p, 1.0))
    keep = impressions > 0
    if lost:
        keep &= ~(treated & (rng.random(len(inside)) < lost))
    return pd.DataFrame(
        {
            "arm": np.where(treated, "treatment", "control")[keep],
            "impressions": impressions[keep],
            "clicks": clicks[keep],
        }
    )


def analyse(users: pd.DataFrame, cap: float | None = 0.99):
    """(comparison of CTR, SRM check) as the report computes them."""
    users = capped(users, cap)
    control = estimate(users[users.arm == "control"], CTR)
    treatment = estimate(users[users.arm == "treatment"], CTR)
    counts = users.arm.value_counts().to_dict()
    return compare(treatment, control), sample_ratio(counts, {"control": 0.5, "treatment": 0.5})


def binomial_ci(k: int, n: int) -> str:
    """`k/n` as a percentage with its Wilson 95 % interval."""
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="wilson")
    return f"{k / n:.1%} [{ci.low:.1%}, {ci.high:.1%}]"


def layers_check(n: int = 200_000) -> tuple[float, int, int]:
    """(chi-square p of two layers' bucket deciles, users in the holdback, of them with an arm
    of that layer)."""
    ids = [f"user-{i}" for i in range(n)]
    a = buckets_of(ids, "ranking", 100) // 10
    b = buckets_of(ids, "retrieval", 100) // 10
    table = np.zeros((10, 10), np.int64)
    np.add.at(table, (a, b), 1)
    p = float(stats.chi2_contingency(table).pvalue)
    config = parse_experiments(
        {
            "layers": [
                {
                    "name": "ranking",
                    "holdback": [90, 100],
                    "experiments": [
                        {"name": "e1", "buckets": [0, 40], "arms": [{"name": "a"}, {"name": "b"}]},
                        {"name": "e2", "buckets": [40, 90], "arms": [{"name": "a"}, {"name": "b"}]},
                    ],
                }
            ]
        }
    )
    hb = buckets_of(ids[:20_000], "ranking", 100) >= 90
    armed = sum(1 for u in np.array(ids[:20_000])[hb] if {"e1", "e2"} & set(assign(config, u)))
    return p, int(hb.sum()), armed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--users", type=int, default=100_000, help="users of the world")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="PNG directory")
    args = parser.parse_args()
    out = args.out or default_data_dir() / "bench" / "experiments"
    t0 = time.perf_counter()
    world = World(args.users, args.seed)
    console.print(
        f"world: {args.users:,} users (synthetic, seed {args.seed}), mean click probability "
        f"{world.p.mean():.3f}; built in {time.perf_counter() - t0:.1f} s"
    )
    rng = np.random.default_rng(args.seed)
    runs = args.runs
    with Progress(console=console) as progress:
        task = progress.add_task("bucketing (a salt per run)", total=runs)
        salts = []
        for r in range(runs):
            salts.append(buckets_of(world.ids, f"bench-{r}", 100))
            progress.advance(task)

        def scenario(name: str, width: int, **kw) -> list:
            task = progress.add_task(name, total=runs)
            results = []
            for r in range(runs):
                users = simulate(world, salts[r], width, rng, **kw)
                results.append((analyse(users), users))
                progress.advance(task)
            return results

        aa = scenario("A/A, 20 buckets", 20)
        aa_raw = [analyse(users, None) for _, users in aa]  # the peer: no heavy-user cap
        pilot = capped(aa[0][1])
        control = estimate(pilot[pilot.arm == "control"], CTR)
        sd = control.se * math.sqrt(control.users)
        need = users_per_arm(control.value, sd, EFFECT)
        per_bucket = len(pilot) / 20
        width = 2 * math.ceil(need / per_bucket)
        if width > 100:
            raise SystemExit(
                f"the MDE calculator asks for {need:,} users per arm; the world has "
                f"{per_bucket * 100:,.0f} active users: run with --users {args.users * width // 90}"
            )
        planted = scenario(f"+5 % clicks, {width} buckets", width, effect=EFFECT)
        srm = scenario(f"A/A, 10 % of treatment users lost, {width} buckets", width, lost=0.1)
    layer_p, in_holdback, armed = layers_check()

    p_aa = np.array([c.p_value for (c, _), _ in aa])
    p_raw = np.array([c.p_value for c, _ in aa_raw])
    detected = np.array([c.p_value < 0.05 for (c, _), _ in planted])
    covered = np.array([c.lift_low <= EFFECT <= c.lift_high for (c, _), _ in planted])
    aa_cover = np.array([c.lift_low <= 0 <= c.lift_high for (c, _), _ in aa])
    flagged = np.array([s.mismatch for (_, s), _ in srm])
    false_srm = np.array([s.mismatch for (_, s), _ in aa])
    lifts = np.array([c.lift for (c, _), _ in planted])

    table = Table(title=f"bench.experiments: {runs} runs per scenario (95 % Wilson intervals)")
    for col in ("check", "measured", "expected"):
        table.add_column(col)
    users_aa = np.median([len(u) for _, u in aa])
    table.add_row(
        f"A/A p < 0.05 (20 buckets, median {users_aa:,.0f} users)",
        binomial_ci(int((p_aa < 0.05).sum()), runs),
        "2 % - 8 %",
    )
    table.add_row(
        "  peer: the same without the heavy-user cap",
        binomial_ci(int((p_raw < 0.05).sum()), runs),
        "(what the cap fixes)",
    )
    table.add_row("A/A lift interval covers 0", binomial_ci(int(aa_cover.sum()), runs), "~95 %")
    table.add_row(
        "MDE calculator (pilot control arm)",
        f"CTR {control.value:.4f}, per-user sd {sd:.4f}: {need:,} users per arm for +5 % -> "
        f"{width} buckets",
        "-",
    )
    users_pl = np.median([len(u) for _, u in planted])
    table.add_row(
        f"+5 % clicks detected ({width} buckets, median {users_pl:,.0f} users)",
        binomial_ci(int(detected.sum()), runs),
        ">= 80 %",
    )
    table.add_row("  lift interval covers +5 %", binomial_ci(int(covered.sum()), runs), "~95 %")
    table.add_row(
        "  median measured lift",
        f"{np.median(lifts):+.2%} (mean {lifts.mean():+.2%})",
        "+5 %",
    )
    table.add_row(
        f"SRM flagged, 10 % of treatment users lost ({width} buckets)",
        binomial_ci(int(flagged.sum()), runs),
        "~100 %",
    )
    table.add_row("SRM false alarms in A/A", binomial_ci(int(false_srm.sum()), runs), "~0.1 %")
    table.add_row("two layers' buckets independent", f"chi-square p = {layer_p:.3f}", "> 0.01")
    table.add_row("holdback users with an arm of its layer", f"{armed} of {in_holdback:,}", "0")
    console.print(table)
    console.print(f"total {time.perf_counter() - t0:.0f} s (2 shared cores: timings are noisy)")
    _plot(p_aa, planted, width, out)


def _plot(p_aa: np.ndarray, planted: list, width: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.hist(p_aa, bins=20, range=(0, 1), color="tab:blue")
    left.axhline(len(p_aa) / 20, color="grey", ls="--", label="uniform")
    left.set_xlabel("A/A p-value")
    left.set_ylabel("runs")
    left.set_title("A/A p-values (should be uniform)")
    left.legend()
    lifts = sorted((c.lift, c.lift_low, c.lift_high) for (c, _), _ in planted)
    x = np.arange(len(lifts))
    y = np.array([m for m, _, _ in lifts]) * 100
    lo = np.array([a for _, a, _ in lifts]) * 100
    hi = np.array([b for _, _, b in lifts]) * 100
    right.vlines(x, lo, hi, color="tab:orange", lw=0.8)
    right.plot(x, y, ".", color="tab:red", ms=3)
    right.axhline(EFFECT * 100, color="black", label="truth +5 %")
    right.axhline(0, color="grey", lw=0.8)
    right.set_xlabel("run (sorted by measured lift)")
    right.set_ylabel("CTR lift, % (95 % CI)")
    right.set_title(f"planted +5 % clicks, {width} buckets")
    right.legend()
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "experiments.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    console.print(f"plot: {path}")


if __name__ == "__main__":
    main()
