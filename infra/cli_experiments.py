"""`streamrec experiments show | report | plan`: the A/B experiments (docs/experiments.md)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from infra.cli_options import ConfigOpt, console, settings_from
from infra.config import Settings
from infra.errors import ConfigError

experiments_app = typer.Typer(
    help="A/B experiments: check the config, report an experiment, plan one.",
    no_args_is_help=True,
)

FileOpt = Annotated[
    Path | None,
    typer.Option("--experiments", help="Experiments YAML (default: settings serving.experiments)."),
]
MetricOpt = Annotated[str, typer.Option("--metric", help="Metric (ctr, clicks_per_user, ...).")]


def _file(settings: Settings, path: Path | None) -> Path:
    path = path or settings.serving.experiments
    if path is None:
        raise ConfigError(
            "no experiments file: pass --experiments FILE or set serving.experiments in the "
            "settings (docs/experiments.md)"
        )
    return path


def _day(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")


@experiments_app.command("show")
def show(experiments: FileOpt = None, config: ConfigOpt = None) -> None:
    """Validate the experiments file (arms' overrides included) and print its layers."""
    from features.experiments import read_experiments
    from serving.experiments import compile_experiments

    settings = settings_from(config)
    path = _file(settings, experiments)
    cfg = read_experiments(path)
    compile_experiments(cfg, settings.serving)
    table = Table(title=f"{path}: {cfg.buckets} buckets per layer")
    for col in ("layer", "experiment", "arm", "buckets", "overrides"):
        table.add_column(col)
    for layer in cfg.layers:
        if layer.holdback is not None:
            hb = layer.holdback
            table.add_row(
                layer.name, layer.holdback_name, "holdback", f"[{hb[0]}, {hb[1]})",
                str(layer.holdback_overrides or "-"),
            )  # fmt: skip
        for exp in layer.experiments:
            for arm, r in exp.arm_ranges().items():
                name = exp.name + ("" if exp.enabled else " (disabled)")
                overrides = exp.arm(arm).overrides
                label = f"{arm} (control)" if arm == exp.control_arm else arm
                table.add_row(layer.name, name, label, f"[{r[0]}, {r[1]})", str(overrides or "-"))
    console.print(table)


def _fmt(x: float, metric: str) -> str:
    return f"{x:.4f}" if metric in ("ctr", "completion_rate") else f"{x:,.3f}"


@experiments_app.command("report")
def report_cmd(
    name: Annotated[str, typer.Argument(help="The experiment (or holdback.<layer>).")],
    experiments: FileOpt = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="PNG of the daily lift (default: <data_dir>/experiments/)."),
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Per-arm metrics with intervals, the lift against control, p-values, the SRM check and a
    PNG of the daily CTR lift; from the experiment log the experiments job writes."""
    from features.experiment_log import read_experiment_log
    from features.experiments import read_experiments
    from streams.experiment_stats import SRM_ALPHA, report

    settings = settings_from(config)
    cfg = read_experiments(_file(settings, experiments))
    _, exp = cfg.experiment(name)
    log = read_experiment_log(settings.paths.experiment_log, name)
    if log.empty:
        raise ConfigError(
            f"no rows of experiment {name!r} in {settings.paths.experiment_log}: run "
            "`streamrec run experiments` on interactions whose impressions carry its arms"
        )
    rep = report(log, name, exp.control_arm, cfg.expected_shares(name))
    days = f"{_day(rep.days[0])} .. {_day(rep.days[-1])}"
    table = Table(title=f"experiment {name}: {days} ({len(rep.days)} days), control {rep.control}")
    for col in ("metric", "arm", "users", "value", "95 % CI", "lift", "lift 95 % CI", "p"):
        table.add_column(col, justify="left" if col in ("metric", "arm") else "right")
    for metric, by_arm in rep.estimates.items():
        for arm in rep.arms:
            e = by_arm[arm]
            lo, hi = e.interval()
            cmp = rep.comparisons[metric].get(arm)
            lift = ci = p = "-"
            if cmp is not None and math.isfinite(cmp.lift):
                lift = f"{cmp.lift:+.2%}"
                ci = f"[{cmp.lift_low:+.2%}, {cmp.lift_high:+.2%}]"
                p = f"{cmp.p_value:.3g}"
                if cmp.p_value < 0.05:
                    p = f"[bold]{p}[/bold]"
            table.add_row(
                metric, arm, f"{e.users:,}", _fmt(e.value, metric),
                f"[{_fmt(lo, metric)}, {_fmt(hi, metric)}]", lift, ci, p,
            )  # fmt: skip
    console.print(table)
    srm = rep.srm
    split = ", ".join(
        f"{a} {srm.observed[a]:,} (expected {srm.expected[a]:,.0f})" for a in srm.observed
    )
    if srm.mismatch:
        console.print(
            f"[bold red]SAMPLE RATIO MISMATCH[/bold red]: users {split}; chi-square "
            f"{srm.chi2:.1f}, p = {srm.p_value:.2g} < {SRM_ALPHA}: the assignment or the logging "
            "of an arm is broken; do not trust the lifts"
        )
    else:
        console.print(f"sample ratio ok: users {split}; chi-square p = {srm.p_value:.3g}")
    png = out or settings.data_dir / "experiments" / f"{name}-daily-lift.png"
    _plot(rep, png)
    console.print(f"daily lift plot: {png}")


def _plot(rep, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for k, (arm, daily) in enumerate(rep.daily.items()):
        x = daily.day.to_numpy() + 0.1 * k
        y = daily.lift.to_numpy() * 100
        err = [y - daily.low.to_numpy() * 100, daily.high.to_numpy() * 100 - y]
        ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, label=f"{arm} vs {rep.control}")
    metric = next(iter(rep.estimates))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(rep.days, [_day(d)[5:] for d in rep.days], rotation=45)
    ax.set_ylabel(f"{metric} lift, % (95 % CI)")
    ax.set_title(f"experiment {rep.experiment}: daily {metric} lift")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


@experiments_app.command("plan")
def plan(
    mde: Annotated[
        float, typer.Option("--mde", help="Relative change to detect (0.05 = 5 %).")
    ] = 0.05,
    metric: MetricOpt = "ctr",
    source: Annotated[
        str | None,
        typer.Option("--from", help="Take mean and per-user sd from this experiment's control."),
    ] = None,
    mean: Annotated[float | None, typer.Option("--mean", help="Metric's mean.")] = None,
    sd: Annotated[
        float | None,
        typer.Option("--sd", help="Per-user sd (a ratio's: its delta-method se x sqrt(users))."),
    ] = None,
    users: Annotated[
        int | None, typer.Option("--users", help="Also: the MDE at this many users per arm.")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Two-sided significance level.")] = 0.05,
    power: Annotated[float, typer.Option(help="Power.")] = 0.8,
    experiments: FileOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Minimum detectable effect: the users per arm a relative change needs (and the MDE at a
    given traffic), for a metric's mean and per-user sd, given or measured on an experiment."""
    from streams.experiment_stats import METRICS, users_per_arm
    from streams.experiment_stats import mde as mde_at

    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; metrics: {list(METRICS)}")
    if source is not None:
        mean, sd = _measured(settings_from(config), experiments, source, metric)
    if mean is None or sd is None:
        raise ConfigError("give --mean and --sd, or --from EXPERIMENT to measure them")
    need = users_per_arm(mean, sd, mde, alpha, power)
    console.print(
        f"{metric}: mean {mean:.5g}, per-user sd {sd:.5g}: {need:,} users per arm detect a "
        f"{mde:+.1%} change (two-sided alpha {alpha}, power {power:.0%})"
    )
    if users:
        at = mde_at(mean, sd, users, alpha, power)
        console.print(f"at {users:,} users per arm the MDE is {at:.2%}")


def _measured(
    settings: Settings, experiments: Path | None, name: str, metric: str
) -> tuple[float, float]:
    from features.experiment_log import read_experiment_log
    from features.experiments import read_experiments
    from streams.experiment_stats import METRICS, estimate, user_totals

    _, exp = read_experiments(_file(settings, experiments)).experiment(name)
    users = user_totals(read_experiment_log(settings.paths.experiment_log, name))
    control = users[users.arm == exp.control_arm]
    if len(control) < 2:
        raise ConfigError(f"experiment {name!r} has fewer than 2 users in its control arm yet")
    e = estimate(control, METRICS[metric])
    return e.value, e.se * math.sqrt(e.users)
