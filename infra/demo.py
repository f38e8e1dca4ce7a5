"""`streamrec demo`: the whole loop on the local stack, measured.

1. The stack comes up; the demo gets topics, a Feast project, an exposure namespace, a sample
   log and a snapshot root of its own (a settings file in its run directory), so runs never mix.
2. The stats, exposure and sample jobs start as processes (`streamrec run ...`).
3. History: synthetic events for the `warm_s` seconds before now are replayed as fast as
   possible; once the joiner has logged their samples, `streamrec learn full` trains both
   models and publishes full snapshots.
4. `streamrec learn online` and `streamrec serve` start. Live: events are produced at their
   event time (event time = wall clock) at `live_rate`, while a client calls `/recommend`,
   and probes measure (a) how long after an impression of a recommended note is produced
   `/recommend` stops returning it, and that it never returns it again, (b) how long after a
   brand-new note's first events it is in the retrieval index.
5. The figures are printed and written (summary.json, PNG plots) in the run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import numpy as np
import redis
import yaml
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from infra import stack
from infra.config import Settings
from infra.errors import InfraError
from streams.events import Event, encode_event
from streams.kafka_io import make_producer
from streams.sources.synthetic import SyntheticConfig, SyntheticSource

CLI = Path(sys.executable).with_name("streamrec")


class DemoError(InfraError):
    """A demo step did not complete; the message names the step and its log."""


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
    snapshot_age_s: list[float] = field(default_factory=list)
    exposure_delays_s: list[float] = field(default_factory=list)
    exposure_violations: int = 0
    new_note_delays_s: list[float] = field(default_factory=list)
    new_notes_missing: int = 0
    category_lift: float = float("nan")
    examples: list[dict] = field(default_factory=list)

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
            "snapshot_age_s",
            "exposure_delays_s",
            "new_note_delays_s",
        ):
            values = getattr(self, name)
            out[name] = {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99)}
        out["run_dir"] = str(self.run_dir)
        return out


class Jobs:
    """The demo's job processes, each logging to `<run_dir>/logs/<name>.log`."""

    def __init__(self, run_dir: Path, env: dict[str, str]) -> None:
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        """Start `streamrec <args>` in its own process group."""
        log = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen(
            [str(CLI), *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def run(self, name: str, args: list[str], timeout: float) -> str:
        """Run `streamrec <args>` to completion; return its output."""
        proc = self.start(name, args)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            raise DemoError(
                f"{name} did not finish in {timeout:.0f} s; see {self.log(name)}"
            ) from None
        out = self.log(name).read_text()
        if code != 0:
            raise DemoError(f"{name} failed (exit {code}); see {self.log(name)}:\n{out[-2000:]}")
        return out

    def log(self, name: str) -> Path:
        """Log file of a job."""
        return self.logs / f"{name}.log"

    def check(self) -> None:
        """Raise if a long-running job has died."""
        for name, proc in self.procs.items():
            if proc.poll() not in (None, 0):
                tail = self.log(name).read_text()[-2000:]
                raise DemoError(f"job {name} exited with {proc.returncode}; its log:\n{tail}")

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        """SIGINT every running job, then SIGKILL what is left after 10 s."""
        running = [p for p in self.procs.values() if p.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + 10
        for proc in running:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill(proc)


def wait_for(condition, what: str, timeout: float, jobs: Jobs | None = None, every: float = 0.25):
    """Poll `condition()` until it returns a truthy value; return it, or raise after `timeout`."""
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


def demo_settings(run_id: str, run_dir: Path, base: Settings, config: DemoConfig) -> dict:
    """The settings file of one demo run: its own topics, project, namespace and directories."""
    prefix = f"demo-{run_id}"
    return {
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
            "log_dir": str(run_dir / "training-samples"),
            "log_rows_per_part": 2_000,
            "log_part_interval_s": 2.0,
            "batch_max_delay_ms": 500,
            "idle_partition_ms": 5_000,
        },
        "snapshots": {"root": str(run_dir / "snapshots"), "delta_every_s": config.delta_every_s},
        "learn": {"batch_size": 512, "admit_after": 1},
    }


class _Stream:
    """The synthetic event stream, re-timed: event k of the world happens at `offset + ts`."""

    def __init__(self, source: SyntheticSource) -> None:
        self._batches = source.batches()
        self._buffer: list[Event] = []
        self.offset_ms = 0

    def until(self, end_ms: int) -> Iterator[list[Event]]:
        """Batches of events (re-timed) before `end_ms`."""
        while True:
            if not self._buffer:
                self._buffer = next(self._batches, [])
                if not self._buffer:
                    return
            shifted = [msgspec.structs.replace(e, ts=e.ts + self.offset_ms) for e in self._buffer]
            cut = next((i for i, e in enumerate(shifted) if e.ts >= end_ms), len(shifted))
            if cut:
                yield shifted[:cut]
            self._buffer = self._buffer[cut:]
            if self._buffer:
                return


def _now_ms() -> int:
    return int(time.time() * 1000)


def _produce_fast(producer, topic: str, stream: _Stream, end_ms: int, progress, task) -> int:
    n = 0
    for batch in stream.until(end_ms):
        for e in batch:
            while True:
                try:
                    producer.produce(topic, encode_event(e), e.user_id.encode())
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        n += len(batch)
        progress.update(task, completed=n)
    if producer.flush(60):
        raise DemoError("the broker did not acknowledge the history events")
    return n


def _produce_live(producer, topic: str, stream: _Stream, end_ms: int, stop: threading.Event):
    """Produce events when the wall clock reaches their event time; return the count."""
    n = 0
    for batch in stream.until(end_ms):
        for lo in range(0, len(batch), 64):
            chunk = batch[lo : lo + 64]
            delay = (chunk[0].ts - _now_ms()) / 1000
            if delay > 0:
                time.sleep(delay)
            if stop.is_set():
                return n
            for e in chunk:
                producer.produce(topic, encode_event(e), e.user_id.encode())
            producer.poll(0)
            n += len(chunk)
    producer.flush(30)
    return n


class Client:
    """`/recommend` and `/notes` calls that record their latency."""

    def __init__(self, base_url: str, n: int) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=10.0)
        self.n = n
        self.latencies_ms: list[float] = []
        self.errors = 0
        self._lock = threading.Lock()

    def recommend(self, user_id: str) -> dict | None:
        """Top-n of a user (None when the call failed)."""
        t0 = time.perf_counter()
        try:
            r = self.http.get("/recommend", params={"user_id": user_id, "n": self.n})
        except httpx.HTTPError:
            r = None
        ms = (time.perf_counter() - t0) * 1000
        with self._lock:
            if r is None or r.status_code != 200:
                self.errors += 1
                return None
            self.latencies_ms.append(ms)
        return r.json()

    def note_indexed(self, note_id: str) -> bool:
        """Whether the retrieval index holds `note_id`."""
        try:
            r = self.http.get(f"/notes/{note_id}")
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and bool(r.json().get("in_index"))

    def ready(self) -> bool:
        """Serving answers /healthz with 200 (a snapshot is loaded)."""
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False


def _ids(answer: dict | None) -> list[str]:
    return [item["note_id"] for item in (answer or {}).get("items", [])]


def run_demo(settings: Settings, config: DemoConfig, console: Console | None = None) -> DemoReport:
    """Run the whole loop once (see the module docstring); return what it measured."""
    console = console or Console()
    state = stack.up(settings)
    run_id = time.strftime("%Y%m%d%H%M%S") + uuid.uuid4().hex[:4]
    run_dir = (Path(settings.stack.state_dir) / "demo" / run_id).resolve()
    run_dir.mkdir(parents=True)
    data = demo_settings(run_id, run_dir, settings, config)
    cfg_path = run_dir / "settings.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    topics = data["kafka"]["topics"]
    stack.ensure_topics(
        state.bootstrap,
        [topics[k] for k in ("interactions", "dlq", "training_samples", "embedding_snapshots")],
        topics["partitions"],
    )
    env = {**os.environ, "STREAMREC_STATE_DIR": str(Path(settings.stack.state_dir).resolve())}
    env["KAFKA_BOOTSTRAP"], env["REDIS_URL"] = state.bootstrap, state.redis_url
    env["COLUMNS"] = "160"  # the jobs' rich output, unwrapped in their logs
    env["OMP_NUM_THREADS"] = "1"  # six processes share two cores
    jobs = Jobs(run_dir, env)
    report = DemoReport(run_dir)
    console.print(f"[bold]demo run {run_id}[/bold]: {run_dir}")
    try:
        _run(config, state, cfg_path, data, jobs, report, console)
    finally:
        jobs.stop()
    (run_dir / "summary.json").write_text(json.dumps(report.summary(), indent=2))
    write_plots(report, run_dir)
    return report


def _run(config, state, cfg_path, data, jobs, report, console) -> None:
    conf = ["--config", str(cfg_path)]
    topic = data["kafka"]["topics"]["interactions"]
    for job in ("stats", "exposure", "samples"):
        jobs.start(job, ["run", job, *conf])
    console.print("started the stats, exposure and sample jobs")

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
    stream = _Stream(source)
    live_start = _now_ms()
    stream.offset_ms = live_start - int(config.warm_s * 1000)
    # batches of 50 ms: Tansu serves tiny batches expensively (docs/operations.md, quirks)
    producer = make_producer(state.bootstrap, **{"linger.ms": 50})
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("history events", total=int(config.warm_s * config.event_rate))
        t0 = time.perf_counter()
        report.warm_events = _produce_fast(producer, topic, stream, live_start, progress, task)
        report.warm_rate = report.warm_events / (time.perf_counter() - t0)
    console.print(f"history: {report.warm_events:,} events at {report.warm_rate:,.0f}/s")

    from features.samples import read_sample_log

    log_dir = Path(data["samples"]["log_dir"])
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
    out = jobs.run("learn-full", ["learn", "full", *conf], config.step_timeout_s)
    report.full_training_s = time.perf_counter() - t0
    for line in out.strip().splitlines()[-3:]:
        console.print(f"  {line}")

    port = stack.free_port()
    jobs.start("learn-online", ["learn", "online", *conf])
    jobs.start("serve", ["serve", "--port", str(port), *conf])
    client = Client(f"http://127.0.0.1:{port}", config.n)
    wait_for(client.ready, "serving to load the snapshots", config.step_timeout_s, jobs)
    console.print(f"serving on http://127.0.0.1:{port}; live phase for {config.live_s:.0f} s")
    stream.offset_ms += _now_ms() - live_start  # event time = wall clock from here on
    _live(config, state, data, stream, producer, client, jobs, report)
    report.latencies_ms, report.errors = client.latencies_ms, client.errors
    _quality(client, report)


def _live(config, state, data, stream, producer, client, jobs, report) -> None:
    from features.exposure import ExposureFilter
    from streams.online_sink import hwm_key

    topic = data["kafka"]["topics"]["interactions"]
    rng = np.random.default_rng(config.seed)
    users = [f"u{i}" for i in range(config.users)]
    stop = threading.Event()
    live_end = _now_ms() + int(config.live_s * 1000)
    counted: dict[str, int] = {}

    def produce() -> None:
        counted["n"] = _produce_live(producer, topic, stream, live_end, stop)

    def background() -> None:
        while not stop.is_set():
            client.recommend(users[int(rng.integers(len(users)))])
            time.sleep(1.0 / config.request_rate)

    def sample_freshness() -> None:
        r = redis.Redis.from_url(state.redis_url)
        snaps = Path(data["snapshots"]["root"])
        while not stop.wait(1.0):
            now = _now_ms()
            for key, out in (
                (hwm_key(data["feast_project"], "stats"), report.feature_lag_ms),
                (f"{data['exposure']['namespace']}:hwm", report.exposure_lag_ms),
            ):
                value = r.get(key)
                if value is not None:
                    out.append(float(now - int(value)))
            manifests = sorted(snaps.glob("ranker/*/manifest.json"))
            if manifests:
                created = json.loads(manifests[-1].read_text())["created_at_ms"]
                report.snapshot_age_s.append((now - created) / 1000)

    threads = [threading.Thread(target=f, daemon=True) for f in (produce, background)]
    threads.append(threading.Thread(target=sample_freshness, daemon=True))
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    exposure = ExposureFilter(redis.Redis.from_url(state.redis_url), data["exposure"]["namespace"])
    probe_producer = make_producer(state.bootstrap)
    deadline = time.monotonic() + config.live_s
    probes = _probe_plan(config)
    new_notes: dict[str, float] = {}
    for kind in probes:
        if time.monotonic() > deadline - 20:
            break
        jobs.check()
        if kind == "exposure":
            _exposure_probe(client, exposure, probe_producer, topic, users, rng, report)
        else:
            note = f"new{len(new_notes)}-{uuid.uuid4().hex[:4]}"
            _new_note_events(probe_producer, topic, note, users, rng)
            new_notes[note] = time.monotonic()
        _check_new_notes(client, new_notes, report)
        time.sleep(max(0.0, (deadline - time.monotonic()) / max(1, len(probes))) * 0.5)
    while new_notes and time.monotonic() < deadline + 30:
        _check_new_notes(client, new_notes, report)
        time.sleep(0.5)
    report.new_notes_missing = len(new_notes)
    stop.set()
    for t in threads:
        t.join(30)
    report.live_events = counted.get("n", 0)
    report.live_rate = report.live_events / (time.perf_counter() - t0)


def _probe_plan(config: DemoConfig) -> list[str]:
    plan = ["new"] * config.new_note_probes + ["exposure"] * config.exposure_probes
    return list(np.random.default_rng(config.seed).permutation(plan))


def _exposure_probe(client, exposure, producer, topic, users, rng, report) -> None:
    """Show the user one recommended note; time until /recommend stops returning it."""
    user = users[int(rng.integers(len(users)))]
    answer = client.recommend(user)
    ids = _ids(answer)
    if not ids:
        return
    note = ids[0]
    event = Event(
        event_id=f"probe-{uuid.uuid4().hex}",
        ts=_now_ms(),
        user_id=user,
        note_id=note,
        type="impression",
        request_id=f"probe-{uuid.uuid4().hex[:8]}",
        position=0,
    )
    producer.produce(topic, encode_event(event), user.encode())
    producer.flush(10)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        if note not in _ids(client.recommend(user)):
            break
        time.sleep(0.05)
    else:
        report.exposure_violations += 1
        return
    report.exposure_delays_s.append(time.monotonic() - t0)
    if not exposure.seen(user, [note])[0]:
        report.exposure_violations += 1  # left the list before the filter knew: not a filter
    for _ in range(5):
        if note in _ids(client.recommend(user)):
            report.exposure_violations += 1
            break


def _new_note_events(producer, topic, note: str, users, rng) -> None:
    """A brand-new note's first events: impressions by 6 users, 3 of them clicking."""
    now = _now_ms()
    for j, u in enumerate(rng.choice(len(users), size=6, replace=False).tolist()):
        user = users[u]
        request = f"req-{note}-{j}"
        common = {"note_id": note, "user_id": user, "request_id": request}
        events = [
            Event(
                event_id=f"{request}-i",
                ts=now,
                type="impression",
                position=0,
                author_id="a0",
                category="c0",
                **common,
            ),
        ]
        if j % 2 == 0:
            events.append(Event(event_id=f"{request}-c", ts=now + 500, type="click", **common))
        for e in events:
            producer.produce(topic, encode_event(e), user.encode())
    producer.flush(10)


def _check_new_notes(client: Client, pending: dict[str, float], report: DemoReport) -> None:
    for note, t0 in list(pending.items()):
        if client.note_indexed(note):
            report.new_note_delays_s.append(time.monotonic() - t0)
            del pending[note]


def _quality(client: Client, report: DemoReport) -> None:
    """Category lift against the synthetic ground truth, and a few example answers."""
    import pyarrow.parquet as pq

    truth = report.run_dir / "truth"
    interest = pq.read_table(truth / "users.parquet").to_pydict()
    notes = pq.read_table(truth / "notes.parquet").to_pydict()
    category = dict(zip(notes["note_id"], notes["category"], strict=True))
    rng = np.random.default_rng(0)
    hits, base = [], []
    for u in rng.choice(len(interest["user_id"]), size=50, replace=False).tolist():
        user, weights = interest["user_id"][u], np.asarray(interest["interest"][u])
        answer = client.recommend(user)
        ids = [i for i in _ids(answer) if i in category]
        if not ids:
            continue
        hits.append(np.mean([weights[int(category[i][1:])] for i in ids]))
        base.append(weights.mean())
        if len(report.examples) < 3:
            top = np.argsort(-weights)[:3]
            report.examples.append(
                {
                    "user_id": user,
                    "top_interests": [f"c{c} ({weights[c]:.2f})" for c in top],
                    "items": (answer or {}).get("items", [])[:5],
                }
            )
    if hits:
        report.category_lift = float(np.mean(hits) / np.mean(base))


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
    table.add_row("ranker snapshot age", fmt("snapshot_age_s", "s"))
    table.add_row("impression -> filtered", fmt("exposure_delays_s", "s"))
    table.add_row("exposed note returned again", str(report.exposure_violations))
    table.add_row("new note -> in index", fmt("new_note_delays_s", "s"))
    table.add_row("new notes never indexed", str(report.new_notes_missing))
    table.add_row("interest lift of recommendations", f"{report.category_lift:.2f}x")
    console.print(table)
    for ex in report.examples:
        console.print(f"[bold]{ex['user_id']}[/bold] interests {', '.join(ex['top_interests'])}")
        for item in ex["items"]:
            scores = ", ".join(f"{k} {v:.3f}" for k, v in item.get("scores", {}).items())
            console.print(f"  {item['note_id']:>8}  {item.get('score', 0):.4f}  {scores}")
    console.print(
        f"figures: {report.run_dir / 'summary.json'}; plot: {report.run_dir / 'demo.png'}"
    )
