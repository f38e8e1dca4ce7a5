"""`streamrec demo`: the whole loop on the local stack, measured.

1. The stack comes up; the demo gets topics, a Feast project, an exposure namespace, a sample
   log and a snapshot root of its own (a settings file in its run directory), so runs never mix.
2. The stats, exposure, sample, experiments and co-click jobs start as processes
   (`streamrec run ...`), in one `infra.processes.ProcessGroup` logging to `<run_dir>/logs/`.
3. History: synthetic events for the `warm_s` seconds before now are replayed as fast as
   possible; once the joiner has logged their samples, `streamrec learn full` trains both
   models and publishes full snapshots.
4. `streamrec learn online` and `streamrec serve` start. Live: events are produced at their
   event time (event time = wall clock) at `live_rate`, while a client calls `/recommend`,
   and probes measure (a) how long after an impression of a recommended note is produced
   `/recommend` stops returning it, and that it never returns it again, (b) how long after a
   brand-new note's first events the fresh channel proposes it (to a user without history) and
   it is in the retrieval index.
5. The figures are printed (with each retrieval channel's share and interest lift of the
   recommendations) and written (summary.json, PNG plots) in the run directory.

Usage:

    from rich.console import Console

    from infra.config import load_settings
    from infra.demo import DemoConfig, print_report, run_demo

    report = run_demo(load_settings(), DemoConfig(warm_s=60, live_s=60))
    print_report(report, Console())
    report.summary()["exposure_delays_s"]  # {"n": ..., "p50": ..., "p99": ...}

Modules: `orchestrate` (settings of a run, the job processes, the phases), `producer` (event
streams), `probes` (HTTP client and the freshness, exposure, new-note and quality probes),
`report` (`DemoReport`, summary, plots, printing).
"""

from infra.demo.errors import DemoError
from infra.demo.orchestrate import DemoConfig, run_demo
from infra.demo.report import DemoReport, print_report, write_plots

__all__ = ["DemoConfig", "DemoError", "DemoReport", "print_report", "run_demo", "write_plots"]
