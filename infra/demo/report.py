"""What a demo run measured: `DemoReport`, its JSON summary, its plots and its printed table."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table


@dataclass
class DemoReport:
    """What a demo run measured."""

    run_dir: Path
    warm_events: int = 0
    warm_rate: float = 0.0
    live_events: int = 0
    live_rate: float = 0.0
    samples_logged: int = 0
    full_training_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    feature_lag_ms: list[float] = field(default_factory=list)
    exposure_lag_ms: list[float] = field(default_factory=list)
    coclick_lag_ms: list[float] = field(default_factory=list)
    """Now minus the co-click job's event-time mark (its fresh list is this far behind)."""
    snapshot_age_s: list[float] = field(default_factory=list)
    exposure_delays_s: list[float] = field(default_factory=list)
    exposure_violations: int = 0
    new_note_delays_s: list[float] = field(default_factory=list)
    new_notes_missing: int = 0
    fresh_delays_s: list[float] = field(default_factory=list)
    """Per new note, seconds from its first event until the fresh channel proposed it."""
    fresh_missing: int = 0
    """New notes the fresh channel had not proposed within the probe's 30 s."""
    dashboard_samples: int = 0
    """Samples the API's /dashboard took during the live phase."""
    dashboard_targets: int = 0
    """Metrics endpoints (jobs, online learner) the dashboard reads."""
    dashboard_targets_up: int = 0
    """Of those, the ones that answered its last sample."""
    channels: dict[str, dict] = field(default_factory=dict)
    """Retrieval channel -> "share" and "items" of the quality users' recommendations, their
    interest "lift", and "answered": the notes /recommend returned from it in the whole run."""
    category_lift: float = float("nan")
    oracle_lift: float = float("nan")
    """Lift of lists of the notes of highest true interest (the synthetic truth), for scale."""
    active_lift: float = float("nan")
    """Interest lift for the 50 users with the most clicked samples (they have a history)."""
    active_oracle_lift: float = float("nan")
    """The oracle's lift for those users."""
    history_notes: list[int] = field(default_factory=list)
    """Per answer of the lift's users, the clicked notes /recommend gave the models (0: none
    stored, or no model reads a history)."""
    examples: list[dict] = field(default_factory=list)
    experiment_report: str = ""
    """What `streamrec experiments report demo-fusion` printed (infra/demo/experiment.py)."""

    def summary(self) -> dict:
        """Medians and tails of every figure, JSON-able."""

        def pct(values: list[float], q: float) -> float | None:
            return float(np.percentile(values, q)) if values else None

        out = {
            k: v
            for k, v in self.__dict__.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        for name in (
            "latencies_ms",
            "feature_lag_ms",
            "exposure_lag_ms",
            "coclick_lag_ms",
            "snapshot_age_s",
            "exposure_delays_s",
            "new_note_delays_s",
            "fresh_delays_s",
            "history_notes",
        ):
            values = getattr(self, name)
            out[name] = {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99)}
        out["channels"] = {
            c: {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in d.items()}
            for c, d in self.channels.items()
        }
        out["run_dir"] = str(self.run_dir)
        return out


def write_plots(report: DemoReport, out: Path) -> list[Path]:
    """Latency, freshness and delay distributions as PNGs in `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("latencies_ms", "/recommend latency (ms)"),
        ("feature_lag_ms", "feature freshness: now - stats high-water mark (ms)"),
        ("exposure_delays_s", "impression -> filtered from /recommend (s)"),
        ("new_note_delays_s", "new note's first events -> in retrieval index (s)"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    for ax, (name, title) in zip(axes.flat, panels, strict=True):
        values = getattr(report, name)
        if values:
            ax.hist(values, bins=40, color="tab:blue")
            ax.axvline(np.percentile(values, 99), color="tab:red", label="p99")
            ax.legend()
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = out / "demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def print_report(report: DemoReport, console: Console) -> None:
    """The figures of a run, then example recommendations."""
    s = report.summary()

    def fmt(name: str, unit: str) -> str:
        d = s[name]
        if not d["n"]:
            return "no data"
        return f"p50 {d['p50']:,.1f} {unit}  p99 {d['p99']:,.1f} {unit}  (n={d['n']})"

    table = Table(title="streamrec demo")
    table.add_column("figure")
    table.add_column("value")
    table.add_row("history replay", f"{report.warm_events:,} events at {report.warm_rate:,.0f}/s")
    table.add_row("live events", f"{report.live_events:,} at {report.live_rate:,.0f}/s")
    table.add_row("samples before full training", f"{report.samples_logged:,}")
    table.add_row("full training (process)", f"{report.full_training_s:.1f} s")
    table.add_row("/recommend latency (client)", fmt("latencies_ms", "ms"))
    table.add_row("/recommend errors", str(report.errors))
    table.add_row("feature freshness (now - hwm)", fmt("feature_lag_ms", "ms"))
    table.add_row("exposure freshness (now - hwm)", fmt("exposure_lag_ms", "ms"))
    table.add_row("co-click freshness (now - hwm)", fmt("coclick_lag_ms", "ms"))
    table.add_row("ranker snapshot age", fmt("snapshot_age_s", "s"))
    table.add_row("impression -> filtered", fmt("exposure_delays_s", "s"))
    table.add_row("exposed note returned again", str(report.exposure_violations))
    within = sum(d <= 5.0 for d in report.fresh_delays_s)
    table.add_row(
        "new note -> fresh channel",
        f"{fmt('fresh_delays_s', 's')}; {within} of "
        f"{len(report.fresh_delays_s) + report.fresh_missing} within 5 s",
    )
    table.add_row("new note -> in index", fmt("new_note_delays_s", "s"))
    table.add_row("new notes never indexed", str(report.new_notes_missing))
    table.add_row(
        "interest lift of recommendations",
        f"{report.category_lift:.2f}x (oracle knowing the truth {report.oracle_lift:.2f}x)",
    )
    table.add_row(
        "interest lift, 50 most active users",
        f"{report.active_lift:.2f}x (oracle {report.active_oracle_lift:.2f}x)",
    )
    table.add_row("user history read by /recommend", fmt("history_notes", "notes"))
    table.add_row(
        "/dashboard",
        f"{report.dashboard_samples} samples; {report.dashboard_targets_up} of "
        f"{report.dashboard_targets} job and learner endpoints answering",
    )
    console.print(table)
    if report.channels:
        mix = Table(title="recommendations by retrieval channel")
        for column in ("channel", "share", "interest lift", "notes", "share, whole run"):
            mix.add_column(column, justify="left" if column == "channel" else "right")
        answered = sum(d.get("answered", 0) for d in report.channels.values())
        for channel, d in sorted(report.channels.items(), key=lambda kv: -kv[1]["share"]):
            run_share = d.get("answered", 0) / answered if answered else float("nan")
            mix.add_row(
                channel,
                f"{100 * d['share']:.1f} %",
                f"{d['lift']:.2f}x",
                str(d["items"]),
                f"{100 * run_share:.1f} %",
            )
        console.print(mix)
    for ex in report.examples:
        console.print(f"[bold]{ex['user_id']}[/bold] interests {', '.join(ex['top_interests'])}")
        for item in ex["items"]:
            scores = ", ".join(f"{k} {v:.3f}" for k, v in item.get("scores", {}).items())
            console.print(f"  {item['note_id']:>8}  {item.get('score', 0):.4f}  {scores}")
    if report.experiment_report:
        console.print(report.experiment_report, markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"figures: {report.run_dir / 'summary.json'}; plot: {report.run_dir / 'demo.png'}"
    )
