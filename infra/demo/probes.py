"""What the demo measures while it runs: an HTTP client of serving and the probes that use it.

- `Client`: `/recommend`, `/notes/{id}` and `/readyz` calls, recording latency and errors;
- `sample_freshness`: once a second, now minus the stats, exposure and co-click high-water marks
  and the age of the newest ranker snapshot;
- `exposure_probe`: one impression of a recommended note, timed until `/recommend` drops it;
- `new_note_events` / `FreshProbe` / `check_new_notes`: a brand-new note's first events, timed
  until the fresh channel proposes it and until the retrieval index holds it;
- `quality`: category lift of recommendations against the synthetic ground truth, overall and
  per retrieval channel (with each channel's share of the recommendations).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from features.redis_conn import connect
from infra.demo.producer import now_ms
from infra.demo.report import DemoReport
from streams.events import Event, encode_event


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

    def note_channels(self, note_id: str, user_id: str, k: int) -> list[str]:
        """The retrieval channels whose best `k` candidates for `user_id` hold `note_id`."""
        try:
            r = self.http.get(f"/notes/{note_id}", params={"user_id": user_id, "k": k})
        except httpx.HTTPError:
            return []
        return r.json().get("channels", []) if r.status_code == 200 else []

    def channel_items(self) -> dict[str, float]:
        """Channel -> notes /recommend returned from it so far (the API's counters)."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            text = self.http.get("/metrics").text
        except httpx.HTTPError:
            return {}
        return {
            s.labels["channel"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "streamrec_channel_items_total" and s.value
        }

    def dashboard(self) -> dict:
        """What /dashboard/data holds ({} when it cannot be read); the first call starts the
        API's dashboard sampler."""
        try:
            r = self.http.get("/dashboard/data")
        except httpx.HTTPError:
            return {}
        return r.json() if r.status_code == 200 else {}

    def ready(self) -> bool:
        """Serving answers /readyz with 200 (snapshots loaded, Redis answers)."""
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False


def ids(answer: dict | None) -> list[str]:
    """Note ids of a `/recommend` answer (none for a failed call)."""
    return [item["note_id"] for item in (answer or {}).get("items", [])]


def sample_freshness(
    redis_url: str,
    feature_hwm_key: str,
    exposure_hwm_key: str,
    snapshot_root: Path,
    report: DemoReport,
    stop: threading.Event,
    coclick_hwm_key: str | None = None,
) -> None:
    """Every second until `stop`: feature, exposure and (with its key) co-click lag, and the
    newest ranker snapshot's age."""
    r = connect(redis_url)
    marks = [(feature_hwm_key, report.feature_lag_ms), (exposure_hwm_key, report.exposure_lag_ms)]
    if coclick_hwm_key is not None:
        marks.append((coclick_hwm_key, report.coclick_lag_ms))
    while not stop.wait(1.0):
        now = now_ms()
        for key, out in marks:
            value = r.get(key)
            if value is not None:
                out.append(float(now - int(value)))
        manifests = sorted(snapshot_root.glob("ranker/*/manifest.json"))
        if manifests:
            created = json.loads(manifests[-1].read_text())["created_at_ms"]
            report.snapshot_age_s.append((now - created) / 1000)


def probe_plan(new_note_probes: int, exposure_probes: int, seed: int) -> list[str]:
    """The probes of a live phase ("new" or "exposure") in a seeded random order."""
    plan = ["new"] * new_note_probes + ["exposure"] * exposure_probes
    return list(np.random.default_rng(seed).permutation(plan))


def exposure_probe(client: Client, exposure, producer, topic, users, rng, report) -> None:
    """Show the user one recommended note; time until /recommend stops returning it."""
    user = users[int(rng.integers(len(users)))]
    answer = client.recommend(user)
    notes = ids(answer)
    if not notes:
        return
    note = notes[0]
    event = Event(
        event_id=f"probe-{uuid.uuid4().hex}",
        ts=now_ms(),
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
        if note not in ids(client.recommend(user)):
            break
        time.sleep(0.05)
    else:
        report.exposure_violations += 1
        return
    report.exposure_delays_s.append(time.monotonic() - t0)
    if not exposure.seen(user, [note])[0]:
        report.exposure_violations += 1  # left the list before the filter knew: not a filter
    for _ in range(5):
        if note in ids(client.recommend(user)):
            report.exposure_violations += 1
            break


def new_note_events(producer, topic, note: str, users, rng) -> None:
    """A brand-new note's first events: impressions by 6 users, 3 of them clicking."""
    now = now_ms()
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


class FreshProbe:
    """New notes timed into the fresh channel, from a thread polling every 200 ms: from a
    note's first event (produced at monotonic `t0`) until the fresh channel of a request reads
    it (`/notes/{id}?user_id=&k=pool`: among the `pool` newest fresh notes every request's
    fresh channel ranks - the least shown first - for a user without history)."""

    def __init__(
        self, client: Client, report: DemoReport, pool: int, timeout_s: float = 30.0
    ) -> None:
        self.client, self.report, self.timeout_s, self.pool = client, report, timeout_s, pool
        self.user = f"probe-{uuid.uuid4().hex[:8]}"  # no clicks: the least shown come first
        self.pending: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, note: str, t0: float) -> None:
        """Time `note`, whose first event was produced at monotonic `t0`."""
        with self._lock:
            self.pending[note] = t0

    def run(self, stop: threading.Event) -> None:
        """Poll the pending notes until `stop`; a note not proposed in `timeout_s` is missing."""
        while not stop.wait(0.2):
            with self._lock:
                pending = list(self.pending.items())
            for note, t0 in pending:
                reached = "fresh" in self.client.note_channels(note, self.user, self.pool)
                late = time.monotonic() - t0 > self.timeout_s
                if reached:
                    self.report.fresh_delays_s.append(time.monotonic() - t0)
                elif late:
                    self.report.fresh_missing += 1
                if reached or late:
                    with self._lock:
                        del self.pending[note]
        with self._lock:
            self.report.fresh_missing += len(self.pending)
            self.pending.clear()


def check_new_notes(client: Client, pending: dict[str, float], report: DemoReport) -> None:
    """Record the delay of every pending new note now in the index and drop it from `pending`."""
    for note, t0 in list(pending.items()):
        if client.note_indexed(note):
            report.new_note_delays_s.append(time.monotonic() - t0)
            del pending[note]


def quality(client: Client, report: DemoReport, sample_log: Path | None = None) -> None:
    """Category lift against the synthetic ground truth, and a few example answers.

    The lift of 50 users' lists: the mean true interest of the recommended notes' categories
    over the mean interest of a random category. The oracle's lift, for scale: the same for a
    list of the `client.n` notes of highest true interest for the user (all of its favourite
    category, so its lift is the user's top interest over the mean). The users are drawn at
    random (most have clicked nothing yet); with `sample_log` the same is measured for the 50
    users with the most clicked samples in it (`active_lift`), where a history exists.
    """
    import pyarrow.parquet as pq

    truth = report.run_dir / "truth"
    interest = pq.read_table(truth / "users.parquet").to_pydict()
    notes = pq.read_table(truth / "notes.parquet").to_pydict()
    rng = np.random.default_rng(0)
    drawn = rng.choice(len(interest["user_id"]), size=50, replace=False).tolist()
    lift = _Lift(client, interest, notes)
    report.category_lift, report.oracle_lift = lift.of(drawn, report, record=True)
    report.channels = lift.by_channel()
    for channel, count in client.channel_items().items():
        report.channels.setdefault(channel, {"share": 0.0, "lift": float("nan"), "items": 0})
        report.channels[channel]["answered"] = count
    if sample_log is not None:
        from features.samples import read_sample_log

        log = read_sample_log(sample_log).select(["user_id", "click"]).to_pandas()
        clicks = log[log.click == 1].groupby("user_id").size()
        active = sorted(clicks.index, key=lambda u: (-clicks[u], u))[:50]
        index = {u: j for j, u in enumerate(interest["user_id"])}
        chosen = [index[u] for u in active if u in index]
        report.active_lift, report.active_oracle_lift = lift.of(chosen, report, record=False)


class _Lift:
    """Lifts of the recommendations of a set of users and of the oracle's lists."""

    def __init__(self, client: Client, interest: dict, notes: dict) -> None:
        self.client, self.interest = client, interest
        self.category = dict(zip(notes["note_id"], notes["category"], strict=True))
        self.note_cats = np.array([int(c[1:]) for c in notes["category"]])
        self.items: list[tuple[str, float | None, float]] = []
        """(channel, true interest of the note or None for a note not in the truth, the
        user's mean interest) of every recommended item of a recorded `of`."""

    def by_channel(self) -> dict[str, dict]:
        """Channel -> share of the recorded items, their interest lift (mean true interest of
        the channel's notes over the mean interest of a random category for the same users)
        and the item count."""
        out = {}
        for channel in sorted({c for c, _, _ in self.items}):
            mine = [(i, b) for c, i, b in self.items if c == channel]
            known = [(i, b) for i, b in mine if i is not None]
            lift = (
                float(np.mean([i for i, _ in known]) / np.mean([b for _, b in known]))
                if known
                else float("nan")
            )
            out[channel] = {"share": len(mine) / len(self.items), "lift": lift, "items": len(mine)}
        return out

    def of(self, users: list[int], report: DemoReport, record: bool) -> tuple[float, float]:
        """(lift, oracle lift) over `users` (rows of the truth); with `record` the history
        read and three example answers go into `report`."""
        hits, base, oracle = [], [], []
        for u in users:
            user, weights = self.interest["user_id"][u], np.asarray(self.interest["interest"][u])
            answer = self.client.recommend(user)
            recommended = [i for i in ids(answer) if i in self.category]
            if record:
                for item in (answer or {}).get("items", []):
                    cat = self.category.get(item["note_id"])
                    mine = None if cat is None else float(weights[int(cat[1:])])
                    self.items.append((item.get("channel", "two_tower"), mine, weights.mean()))
            if not recommended:
                continue
            hits.append(np.mean([weights[int(self.category[i][1:])] for i in recommended]))
            base.append(weights.mean())
            oracle.append(oracle_interest(weights, self.note_cats, self.client.n))
            if not record:
                continue
            report.history_notes.append(int((answer or {}).get("history", 0)))
            if len(report.examples) < 3:
                top = np.argsort(-weights)[:3]
                report.examples.append(
                    {
                        "user_id": user,
                        "top_interests": [f"c{c} ({weights[c]:.2f})" for c in top],
                        "items": (answer or {}).get("items", [])[:5],
                    }
                )
        if not hits:
            return float("nan"), float("nan")
        return float(np.mean(hits) / np.mean(base)), float(np.mean(oracle) / np.mean(base))


def oracle_interest(weights: np.ndarray, note_categories: np.ndarray, n: int) -> float:
    """Mean true interest of the `n` notes a user is most interested in (ties: any)."""
    per_note = weights[note_categories]  # (notes,)
    top = np.sort(per_note)[::-1][:n]
    return float(top.mean())
