"""Serving replicas that share only Kafka and the snapshot store (s3:// on the local S3 server):
a copy-less replica answers as the first, deltas carried in their announcements."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from infra.cli_serve import _start_service
from infra.config import Settings
from infra.processes import free_port, stop
from infra.stack import ensure_topics
from learners.errors import SnapshotConflictError, SnapshotCorruptError
from learners.online import OnlineLearner
from learners.snapshots import (
    IDS,
    TABLES,
    Publication,
    SnapshotConfig,
    SnapshotReader,
    SnapshotWriter,
    TableRows,
    apply_delta,
)
from learners.subscription import (
    FILE_HEADER,
    Announcements,
    encode_announcement,
    kafka_announcer,
)
from tests.learners.helpers import CONFIG, Clock, messages, publish_trained
from tests.serving.helpers import serving_settings

USERS = ["u1", "u7", "u42", "u150"]


def _answers(client: TestClient | httpx.Client) -> dict[str, tuple]:
    """User -> (versions, [(note, score)]) of /recommend: what must be identical."""
    out = {}
    for user in USERS:
        response = client.get("/recommend", params={"user_id": user, "n": 20})
        assert response.status_code == 200, response.text
        body = response.json()
        items = [(i["note_id"], i["score"]) for i in body["items"]]
        out[user] = (body["versions"], items)
    return out


def _replica(settings: Settings, data_dir: Path, poll_interval_s: float) -> Settings:
    """`settings` of a replica working in `data_dir` (empty) with its own store poll."""
    serving = settings.serving.model_copy(update={"poll_interval_s": poll_interval_s})
    root = settings.snapshots.model_copy(update={"root": data_dir / "snapshots"})
    return settings.model_copy(update={"data_dir": data_dir, "serving": serving, "snapshots": root})


@contextmanager
def _serve(config: Path, data_dir: Path, bootstrap: str, redis_url: str) -> Iterator[httpx.Client]:
    """A `streamrec serve` process on `config` in `data_dir`; a client once it is ready."""
    env = {
        **os.environ,  # the AWS_* environment of the S3 server
        "STREAMREC_CONFIG": str(config),
        "STREAMREC_DATA_DIR": str(data_dir),
        "KAFKA_BOOTSTRAP": bootstrap,
        "REDIS_URL": redis_url,
    }
    port = free_port()
    log = config.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [Path(sys.executable).with_name("streamrec"), "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            while True:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"not ready in 240 s: {log.read_text()}"
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)  # pacing of the readiness probe
            yield http
    finally:
        stop([proc], signal.SIGTERM, grace_s=30)


@pytest.mark.serial
def test_a_copyless_replica_answers_as_the_first_within_one_delta_interval(
    tmp_path: Path, s3_url: str, bootstrap: str, redis_url: str, topic_name: str
) -> None:
    """A `streamrec serve` in an empty directory, given the Kafka bootstrap and the store URL
    (and Redis), answers /recommend as the service beside the learner, each delta applied from
    its announcement within one delta interval."""
    store = publish_trained(s3_url)  # what `learn full` put in the store
    topic = f"{topic_name}-snapshots"
    ensure_topics(bootstrap, [topic], 1)
    base = serving_settings(tmp_path / "unused", redis_url)
    config = tmp_path / "replica.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "snapshots": {"url": s3_url},
                "kafka": {"topics": {"embedding_snapshots": topic}},
                "exposure": {"namespace": base.exposure.namespace},
                "feast_project": base.feast_project,
                # the replica never polls the store after its start: deltas come through Kafka
                "serving": {"poll_interval_s": 600},
            }
        )
    )
    base = base.model_copy(
        update={
            "snapshots": base.snapshots.model_copy(update={"url": s3_url}),
            "kafka": base.kafka.model_copy(
                update={
                    "topics": base.kafka.topics.model_copy(update={"embedding_snapshots": topic})
                }
            ),
        }
    )
    first_dir, replica_dir = tmp_path / "first", tmp_path / "replica"
    first_dir.mkdir()
    replica_dir.mkdir()
    # the first polls the store as well, in the learner's process (what numbered two ranker
    # deltas 2 while the store's listings were cached per process)
    first = _start_service(redis_url, bootstrap, _replica(base, first_dir, 0.05), None)
    try:
        with _serve(config, replica_dir, bootstrap, redis_url) as replica:
            clients = TestClient(first.app), replica
            assert _answers(clients[0]) == _answers(clients[1])  # both read the store
            start = first.watcher.current().versions
            clock = Clock()
            learner = OnlineLearner.from_latest(
                CONFIG, store, announce=kafka_announcer(bootstrap, topic), clock=clock
            )
            carried, lags = 0, []
            for round_ in range(2):
                t = time.monotonic()
                for m in messages(seed=31 + round_, n=600, users=300, t0=2 * 10**9):
                    learner.add(replace(m, offset=m.offset + 1000 * round_))  # new offsets
                clock.now += store.delta_every_s + 1
                learner.flush()
                published = learner.tick()
                announced = time.monotonic()
                sizes = {m.model: sum(m.sizes.values()) for m in published}
                print(f"round {round_}: trained, published in {announced - t:.1f} s, {sizes} B")
                want = {m.model: m.version for m in published if m.model in start}
                assert set(want) == {"ranker", "retriever"} and all(
                    m.kind == "delta" for m in published
                ), published
                carried += len(want)
                deadline = announced + store.delta_every_s  # one delta interval
                while time.monotonic() < deadline:
                    views = [first.watcher.current().versions, _versions(replica)]
                    if all({k: v.get(k) for k in want} == want for v in views):
                        break
                    time.sleep(0.02)  # pacing of the probe
                lags.append(time.monotonic() - announced)
                answers = [_answers(c) for c in clients]
                assert answers[0] == answers[1], f"round {round_}: the replica answers otherwise"
                assert {k: answers[1]["u1"][0][k] for k in want} == want, (
                    f"round {round_}: not served within {store.delta_every_s} s"
                )
            print(f"replica served each delta {', '.join(f'{x:.2f}' for x in lags)} s after it")
            metrics = replica.get("/metrics").text  # every delta applied from its announcement
            assert f"streamrec_snapshot_deltas_carried {float(carried)}" in metrics, metrics
            assert _versions(replica) != start
        assert not any(replica_dir.rglob("*")), "the replica wrote into its working directory"
    finally:
        first.watcher.stop()


def _versions(http: httpx.Client) -> dict[str, int]:
    """Model -> snapshot version a `streamrec serve` uses (its /metrics)."""
    text = http.get("/metrics").text
    return {
        x.labels["model"]: int(x.value)
        for family in text_string_to_metric_families(text)
        for x in family.samples
        if x.name == "streamrec_snapshot_version"
    }


def _delta_setup(tmp_path: Path):
    rng = np.random.default_rng(5)
    writer = SnapshotWriter(tmp_path, "m", SnapshotConfig(root=tmp_path))
    ids = [f"u{i}" for i in range(50)]
    writer.publish_full(
        {"user": TableRows(ids, rng.standard_normal((50, 8), dtype=np.float32))}, {}, 1, {}
    )
    reader = SnapshotReader(tmp_path, "m")
    held = reader.latest()
    sent: list[Publication] = []
    writer = SnapshotWriter(tmp_path, "m", SnapshotConfig(root=tmp_path), sent.append)
    rows = TableRows(["u3", "u60", "u61"], rng.standard_normal((3, 8), dtype=np.float32))
    writer.publish_delta({"user": rows, "note": TableRows(["n1"], rows.weights[:1])}, 2)
    return reader, held, sent[0]


def test_a_carried_delta_gives_the_state_read_from_the_store(tmp_path: Path) -> None:
    reader, held, pub = _delta_setup(tmp_path)
    got = apply_delta(held, pub.manifest, pub.files)
    want = reader.refresh(held)
    assert got.versions == want.versions == (1, 2) and got.manifest == want.manifest
    for name, table in want.tables.items():
        assert got.tables[name].ids == table.ids
        np.testing.assert_array_equal(got.tables[name].weights, table.weights)
    assert held.versions == (1,) and len(held.tables["user"].ids) == 50  # untouched
    with pytest.raises(SnapshotConflictError, match="does not follow"):
        apply_delta(got, pub.manifest, pub.files)  # already applied: not the next one


def test_a_damaged_carried_delta_is_refused(tmp_path: Path) -> None:
    _, held, pub = _delta_setup(tmp_path)
    damaged = bytearray(pub.files[TABLES])
    damaged[-1] ^= 0xFF
    with pytest.raises(SnapshotCorruptError, match="sha256"):
        apply_delta(held, pub.manifest, {**pub.files, TABLES: bytes(damaged)})
    with pytest.raises(SnapshotCorruptError, match="missing"):
        apply_delta(held, pub.manifest, {TABLES: pub.files[TABLES]})


def test_only_deltas_within_the_limit_are_carried(tmp_path: Path) -> None:
    _, _, pub = _delta_setup(tmp_path)
    value, headers = encode_announcement(pub, 900_000)
    carried = {k.removeprefix(FILE_HEADER) for k, _ in headers if k.startswith(FILE_HEADER)}
    assert carried == {TABLES, IDS}
    size = len(value) + sum(len(k) + len(v) for k, v in headers)
    _, headers = encode_announcement(pub, size)  # the record framing no longer fits
    assert not any(k.startswith(FILE_HEADER) for k, _ in headers)
    assert dict(headers)["streamrec-location"] == str(tmp_path / "m" / "0000000002").encode()


def test_a_delta_near_the_limit_goes_through_the_broker(
    tmp_path: Path, bootstrap: str, topic_name: str
) -> None:
    """A delta just under the default limit (~0.9 MB) is carried whole through the broker; one
    just over it is announced by reference."""
    topic = f"{topic_name}-snapshots"
    ensure_topics(bootstrap, [topic], 1)
    rng = np.random.default_rng(8)
    config = SnapshotConfig(root=tmp_path)
    writer = SnapshotWriter(tmp_path, "m", config, kafka_announcer(bootstrap, topic))
    writer.publish_full({"user": TableRows(["u0"], np.zeros((1, 32), np.float32))}, {}, 1, {})
    got = []
    with Announcements(bootstrap, topic) as follower:
        for n in (6_600, 7_200):  # 128 B of floats + ~7 B of id per row: 0.89 and 0.97 MB
            ids = [f"u{i}" for i in range(n)]
            weights = rng.standard_normal((n, 32), dtype=np.float32)
            writer.publish_delta({"user": TableRows(ids, weights)}, 2)
        deadline = time.monotonic() + 30
        while len(got) < 2 and time.monotonic() < deadline:
            got += follower.poll(0.2)
    small, large = got
    assert sum(small.manifest.sizes.values()) > 850_000
    assert small.files[TABLES] == (tmp_path / "m" / "0000000002" / TABLES).read_bytes()
    assert large.files == {} and large.location == str(tmp_path / "m" / "0000000003")
