"""The demo's run: its settings, its job processes and its two phases (history, then live).

The jobs are `streamrec ...` processes in one `infra.processes.ProcessGroup`, each logging to
`<run_dir>/logs/<name>.log`; a job that dies fails the run with `ProcessError` and its log tail.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from features import ExposureFilter, mark_key, read_sample_log
from features.exposure import hwm_key as exposure_hwm_key
from features.paths import DATA_DIR_ENV
from features.redis_conn import connect
from infra import stack
from infra.cli_options import progress_bar
from infra.config import Settings, load_settings
from infra.demo import experiment
from infra.demo.errors import DemoError
from infra.demo.probes import (
    Client,
    FreshProbe,
    check_new_notes,
    exposure_probe,
    new_note_events,
    probe_plan,
    quality,
    sample_freshness,
)
from infra.demo.producer import EventStream, now_ms, produce_history, produce_live
from infra.demo.report import DemoReport, write_plots
from infra.processes import ProcessGroup, free_port
from streams.kafka_io import make_producer
from streams.sources.synthetic import SyntheticConfig, SyntheticSource

CLI = Path(sys.executable).with_name("streamrec")


class DemoConfig(BaseModel):
    """Shape and length of a demo run."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    seed: int = 7
    """Seed of the synthetic world and its events."""
    users: int = Field(default=2_000, ge=10)
    """Synthetic users."""
    notes: int = Field(default=5_000, ge=10)
    """Synthetic notes."""
    event_rate: float = Field(default=1_500.0, gt=0)
    """Events per second of event time (the live phase produces them at this wall rate)."""
    warm_s: float = Field(default=180.0, gt=0)
    """Seconds of event-time history replayed as fast as possible before training."""
    live_s: float = Field(default=120.0, gt=0)
    """Seconds of the live phase."""
    request_rate: float = Field(default=10.0, gt=0)
    """`/recommend` calls per second of the background client during the live phase."""
    exposure_probes: int = Field(default=20, ge=0)
    """Impressions of recommended notes whose filtering delay is measured."""
    new_note_probes: int = Field(default=8, ge=0)
    """Brand-new notes whose delay into the retrieval index is measured."""
    attribution_window_ms: int = Field(default=10_000, ge=1)
    """Joiner attribution window (short, so samples and new notes reach the models quickly)."""
    delta_every_s: float = Field(default=5.0, gt=0)
    """Online learner delta interval."""
    n: int = Field(default=20, ge=1)
    """Notes per recommendation."""
    step_timeout_s: float = Field(default=240.0, gt=0)
    """Longest wait for one step (a job catching up, training, serving becoming ready)."""
    ranker_history: int | None = Field(default=None, ge=0, le=200)
    """Clicked notes the ranker attends to (`learn.ranker_history`); None: the shipped default."""
    retriever_history: int | None = Field(default=None, ge=0, le=200)
    """Clicked notes the user tower pools (`learn.retriever_history`); None: the default."""


def wait_for(
    condition, what: str, timeout: float, jobs: ProcessGroup | None = None, every: float = 0.25
):
    """Poll `condition()` until it returns a truthy value; return it, or raise after `timeout`.

    Raises:
        DemoError: `timeout` seconds passed.
        ProcessError: one of `jobs` died meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if jobs is not None:
            jobs.check()
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


JOBS = ("stats", "exposure", "samples", "experiments", "itemcf")
"""The stream jobs a demo runs (`streamrec run JOB`)."""


def demo_settings(
    run_id: str,
    run_dir: Path,
    base: Settings,
    config: DemoConfig,
    metrics_ports: dict[str, int] | None = None,
) -> dict:
    """The settings file of one demo run: its own topics, project, namespace and data directory.

    Every file of the run (Feast registry and offline log, sample log, snapshots, recovery
    stores) is derived from its data directory `run_dir`; `metrics_ports` (process -> port of
    its metrics endpoint) become the targets of the API's /dashboard.
    """
    prefix = f"demo-{run_id}"
    targets = [f"127.0.0.1:{port}" for port in (metrics_ports or {}).values()]
    out = {
        "data_dir": str(run_dir),
        "kafka": {
            "topics": {
                "interactions": f"{prefix}-interactions",
                "dlq": f"{prefix}-interactions.dlq",
                "training_samples": f"{prefix}-training-samples",
                "embedding_snapshots": f"{prefix}-embedding-snapshots",
                "partitions": base.kafka.topics.partitions,
            }
        },
        "feast_project": f"demo_{run_id}",
        "stats": {"flush_interval_ms": 200},
        "exposure": {"namespace": f"{prefix}:exposure"},
        "samples": {
            "attribution_window_ms": config.attribution_window_ms,
            "allowed_lateness_ms": 1_000,
            "log_rows_per_part": 2_000,
            "log_part_interval_s": 2.0,
            "batch_max_delay_ms": 500,
            "idle_partition_ms": 5_000,
        },
        "snapshots": {"delta_every_s": config.delta_every_s},
        **experiment.settings(run_dir / "experiments.yaml"),
        "learn": {
            "batch_size": 512,
            "admit_after": 1,
            **(
                {"ranker_history": config.ranker_history}
                if config.ranker_history is not None
                else {}
            ),
            **(
                {"retriever_history": config.retriever_history}
                if config.retriever_history is not None
                else {}
            ),
        },
    }
    out["serving"] = {**out.get("serving", {}), "dashboard": {"targets": targets}}
    return out


def _cli(*args: str) -> list[str]:
    """The command line of `streamrec <args>` in this interpreter's environment."""
    return [str(CLI), *args]


def run_demo(settings: Settings, config: DemoConfig, console: Console | None = None) -> DemoReport:
    """Run the whole loop once (see `infra.demo`); return what it measured."""
    console = console or Console()
    state = stack.up(settings)
    run_id = time.strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:4]
    run_dir = (settings.data_dir / "demo" / run_id).resolve()
    run_dir.mkdir(parents=True)
    cfg_path = run_dir / "settings.yaml"
    experiment.write_experiments(run_dir)
    ports = {name: free_port() for name in (*JOBS, "learn-online")}
    cfg_path.write_text(yaml.safe_dump(demo_settings(run_id, run_dir, settings, config, ports)))
    env = {**os.environ, DATA_DIR_ENV: str(run_dir)}
    env["KAFKA_BOOTSTRAP"], env["REDIS_URL"] = state.bootstrap, state.redis_url
    run = load_settings(cfg_path, env)  # what the jobs will read
    topics = run.kafka.topics
    stack.ensure_topics(
        state.bootstrap,
        [topics.interactions, topics.dlq, topics.training_samples, topics.embedding_snapshots],
        topics.partitions,
    )
    env["COLUMNS"] = "160"  # the jobs' rich output, unwrapped in their logs
    env["OMP_NUM_THREADS"] = "1"  # six processes share two cores
    jobs = ProcessGroup(run_dir / "logs", env)
    report = DemoReport(run_dir)
    console.print(f"[bold]demo run {run_id}[/bold]: {run_dir}")
    try:
        _run(config, state, cfg_path, run, jobs, report, console, ports)
    finally:
        jobs.stop()
    (run_dir / "summary.json").write_text(json.dumps(report.summary(), indent=2))
    write_plots(report, run_dir)
    return report


def _run(
    config, state, cfg_path: Path, run: Settings, jobs: ProcessGroup, report, console, ports
) -> None:
    """Jobs, history, full training, then online learning and serving for the live phase."""
    conf = ["--config", str(cfg_path)]
    topic = run.kafka.topics.interactions
    for job in JOBS:
        jobs.start(job, _cli("run", job, "--metrics-port", str(ports[job]), *conf))
    console.print("started the stats, exposure, sample, experiments and co-click jobs")

    gap_ms = 1000.0 / config.event_rate * 10  # ~10 events per request in the synthetic world
    world = SyntheticConfig(
        seed=config.seed,
        users=config.users,
        notes=config.notes,
        start_ms=0,
        request_gap_ms=gap_ms,
    )
    source = SyntheticSource(world, limit=10**12)
    source.write_truth(report.run_dir / "truth")
    stream = EventStream(source)
    live_start = now_ms()
    stream.offset_ms = live_start - int(config.warm_s * 1000)
    # batches of 50 ms: Tansu serves tiny batches expensively (docs/operations.md, quirks)
    producer = make_producer(state.bootstrap, **{"linger.ms": 50})
    progress = progress_bar(out=console)
    with progress:
        task = progress.add_task("history events", total=int(config.warm_s * config.event_rate))
        t0 = time.perf_counter()
        report.warm_events = produce_history(producer, topic, stream, live_start, progress, task)
        report.warm_rate = report.warm_events / (time.perf_counter() - t0)
    console.print(f"history: {report.warm_events:,} events at {report.warm_rate:,.0f}/s")

    log_dir = run.paths.sample_log
    horizon = live_start - config.attribution_window_ms - 30_000

    def logged() -> int:
        if not any(log_dir.glob("part-*.parquet")):
            return 0
        table = read_sample_log(log_dir)
        ts = table.column("ts").to_numpy()
        return len(ts) if len(ts) and ts.max() >= horizon else 0

    report.samples_logged = wait_for(
        logged, "the joiner to log the history's samples", config.step_timeout_s, jobs, every=1.0
    )
    console.print(f"the joiner logged {report.samples_logged:,} samples; full training")
    t0 = time.perf_counter()
    out = jobs.run("learn-full", _cli("learn", "full", *conf), config.step_timeout_s)
    report.full_training_s = time.perf_counter() - t0
    for line in out.strip().splitlines()[-3:]:
        console.print(f"  {line}")

    port = free_port()
    online = ("--metrics-port", str(ports["learn-online"]))
    jobs.start("learn-online", _cli("learn", "online", *online, *conf))
    jobs.start("serve", _cli("serve", "--port", str(port), *conf))
    client = Client(f"http://127.0.0.1:{port}", config.n)
    wait_for(client.ready, "serving to load the snapshots", config.step_timeout_s, jobs)
    client.dashboard()  # starts its sampler: the live phase is on the page
    console.print(
        f"serving on http://127.0.0.1:{port} (dashboard: http://127.0.0.1:{port}/dashboard); "
        f"live phase for {config.live_s:.0f} s"
    )
    stream.offset_ms += now_ms() - live_start  # event time = wall clock from here on
    responder = experiment.Responder(source, producer, topic, config.seed)
    _live(config, state, run, stream, producer, client, jobs, report, responder)
    report.latencies_ms, report.errors = client.latencies_ms, client.errors
    board = client.dashboard()
    report.dashboard_samples = len(board.get("points", []))
    report.dashboard_targets = len(board.get("targets", []))
    report.dashboard_targets_up = sum(t["up"] for t in board.get("targets", []))
    quality(client, report, run.paths.sample_log)
    report.experiment_report = experiment.report(responder, jobs, conf, run, config.step_timeout_s)


def _live(
    config, state, run: Settings, stream, producer, client, jobs: ProcessGroup, report, responder
) -> None:
    """Live events, background requests and freshness samples while the probes run."""
    topic = run.kafka.topics.interactions
    rng = np.random.default_rng(config.seed)
    users = [f"u{i}" for i in range(config.users)]
    stop = threading.Event()
    live_end = now_ms() + int(config.live_s * 1000)
    counted: dict[str, int] = {}

    def produce() -> None:
        counted["n"] = produce_live(producer, topic, stream, live_end, stop)

    def background() -> None:
        while not stop.is_set():  # each answer is shown: the demo's A/B experiment
            responder.show(client.recommend(users[int(rng.integers(len(users)))]), now_ms())
            time.sleep(1.0 / config.request_rate)

    freshness = (
        state.redis_url,
        mark_key(run.feast_project, "stats"),
        exposure_hwm_key(run.exposure.namespace),
        Path(run.snapshots.root),
        report,
        stop,
        mark_key(run.feast_project, "itemcf"),
    )
    fresh = FreshProbe(client, report, run.serving.channels.fresh_pool)
    fresh_stop = threading.Event()
    threads = [threading.Thread(target=f, daemon=True) for f in (produce, background)]
    threads.append(threading.Thread(target=sample_freshness, args=freshness, daemon=True))
    fresh_thread = threading.Thread(target=fresh.run, args=(fresh_stop,), daemon=True)
    fresh_thread.start()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    exposure = ExposureFilter(connect(state.redis_url), run.exposure.namespace)
    probe_producer = make_producer(state.bootstrap)
    deadline = time.monotonic() + config.live_s
    probes = probe_plan(config.new_note_probes, config.exposure_probes, config.seed)
    new_notes: dict[str, float] = {}
    for kind in probes:
        if time.monotonic() > deadline - 20:
            break
        jobs.check()
        if kind == "exposure":
            exposure_probe(client, exposure, probe_producer, topic, users, rng, report)
        else:
            note = f"new{len(new_notes)}-{uuid.uuid4().hex[:4]}"
            t0 = time.monotonic()
            new_note_events(probe_producer, topic, note, users, rng)
            new_notes[note] = t0
            fresh.add(note, t0)
        check_new_notes(client, new_notes, report)
        time.sleep(max(0.0, (deadline - time.monotonic()) / max(1, len(probes))) * 0.5)
    while (new_notes or fresh.pending) and time.monotonic() < deadline + 30:
        check_new_notes(client, new_notes, report)
        time.sleep(0.5)
    report.new_notes_missing = len(new_notes)
    fresh_stop.set()
    fresh_thread.join(30)
    stop.set()
    for t in threads:
        t.join(30)
    report.live_events = counted.get("n", 0)
    report.live_rate = report.live_events / (time.perf_counter() - t0)
