"""Embedding snapshots: round trips, atomicity under kill -9, corruption, retention, announcing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import msgspec
import numpy as np
import pytest
from typer.testing import CliRunner

from infra.cli import app
from learners.errors import (
    LearnersError,
    SnapshotConflictError,
    SnapshotCorruptError,
    SnapshotError,
    SnapshotNotFoundError,
)
from learners.snapshots import (
    IDS,
    MANIFEST,
    TABLES,
    Manifest,
    SnapshotConfig,
    SnapshotReader,
    SnapshotWriter,
    TableRows,
    decode_announcement,
    encode_manifest,
)
from learners.subscription import Announcements, kafka_announcer
from streams.kafka_io import read_to_end

REPO = Path(__file__).resolve().parents[2]
MODEL = "mmoe"


def rows(prefix: str, n: int, dim: int, rng: np.random.Generator, start: int = 0) -> TableRows:
    """`n` random rows with ids `<prefix><start>...`."""
    ids = [f"{prefix}{i}" for i in range(start, start + n)]
    return TableRows(ids, rng.standard_normal((n, dim), dtype=np.float32))


def as_dict(table: TableRows) -> dict[str, np.ndarray]:
    """id -> weight row."""
    return {i: table.weights[k] for k, i in enumerate(table.ids)}


def apply(state: dict[str, dict], tables: dict[str, TableRows]) -> None:
    """The reference semantics: later rows override, new ids are appended (dict order)."""
    for name, table in tables.items():
        state.setdefault(name, {}).update(as_dict(table))


def assert_state(snapshot_tables: dict[str, TableRows], expected: dict[str, dict]) -> None:
    """Same tables, same ids in the same order, bit-identical weights."""
    assert list(snapshot_tables) == list(expected)
    for name, want in expected.items():
        got = snapshot_tables[name]
        assert got.ids == list(want)
        assert got.weights.dtype == np.float32
        np.testing.assert_array_equal(got.weights, np.stack(list(want.values())))


def writer(root: Path, keep_full: int = 3, **kw: object) -> SnapshotWriter:
    return SnapshotWriter(root, MODEL, SnapshotConfig(root=root, keep_full=keep_full), **kw)


def publish_history(root: Path, rng: np.random.Generator) -> tuple[list[Manifest], list[dict]]:
    """A full, three deltas (overrides, new ids, a new table), a second full and a delta.

    Returns the manifests and the expected state after each version.
    """
    w = writer(root)
    dense = {"experts.0.weight": rng.standard_normal((4, 3)), "gate.bias": np.arange(3)}
    state: dict[str, dict] = {}
    full = {"user": rows("u", 50, 8, rng), "note": rows("n", 30, 8, rng)}
    manifests = [w.publish_full(full, dense, hwm_ms=1_000, meta={"dim": 8, "tasks": ["click"]})]
    apply(state, full)
    states = [{k: dict(v) for k, v in state.items()}]
    deltas = [
        {"user": rows("u", 5, 8, rng, start=10)},  # overrides only
        {"user": rows("u", 10, 8, rng, start=45), "note": rows("n", 3, 8, rng, start=0)},
        {"author": rows("a", 4, 8, rng), "user": rows("u", 2, 8, rng, start=12)},
    ]
    for k, delta in enumerate(deltas):
        manifests.append(w.publish_delta(delta, hwm_ms=2_000 + k))
        apply(state, delta)
        states.append({k: dict(v) for k, v in state.items()})
    full2 = {"user": rows("u", 70, 8, rng), "note": rows("n", 20, 8, rng)}
    manifests.append(w.publish_full(full2, dense, hwm_ms=9_000, meta={"dim": 8}))
    state = {}
    apply(state, full2)
    states.append({k: dict(v) for k, v in state.items()})
    delta = {"note": rows("n", 5, 8, rng, start=18)}
    manifests.append(w.publish_delta(delta, hwm_ms=9_500, meta={"dim": 8, "step": 1}))
    apply(state, delta)
    states.append({k: dict(v) for k, v in state.items()})
    return manifests, states


def test_round_trip_full_and_deltas(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    manifests, states = publish_history(tmp_path, rng)
    assert [m.version for m in manifests] == [1, 2, 3, 4, 5, 6]
    assert [m.kind for m in manifests] == ["full", "delta", "delta", "delta", "full", "delta"]
    assert [m.base_version for m in manifests] == [None, 1, 1, 1, None, 5]
    assert [m.parent_version for m in manifests] == [None, 1, 2, 3, None, 5]
    assert manifests[1].meta == manifests[0].meta  # a delta without meta inherits its base's
    assert manifests[5].meta == {"dim": 8, "step": 1}
    assert manifests[2].rows == {"user": 10, "note": 3}
    reader = SnapshotReader(tmp_path, MODEL)
    assert reader.versions() == manifests
    assert reader.problems() == []
    for manifest, expected in zip(manifests, states, strict=True):
        snapshot = reader.load(manifest.version)
        assert snapshot.manifest == manifest
        assert_state(snapshot.tables, expected)
    latest = reader.latest()
    assert latest.manifest == manifests[-1] and latest.versions == (5, 6)
    assert_state(latest.tables, states[-1])
    assert reader.load(4).versions == (1, 2, 3, 4)
    dense = reader.load(3).dense
    assert set(dense) == {"experts.0.weight", "gate.bias"}
    assert dense["gate.bias"].tolist() == [0, 1, 2]
    assert manifest_on_disk(tmp_path, 3) == manifests[2]


def test_refresh_reads_only_the_new_deltas_and_leaves_the_old_state_alone(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    w = writer(tmp_path)
    w.publish_full({"user": rows("u", 40, 4, rng)}, {"b": np.ones(2)}, 0, {})
    w.publish_delta({"user": rows("u", 5, 4, rng, start=38)}, 1)
    reader = SnapshotReader(tmp_path, MODEL)
    before = reader.latest()
    frozen = before.tables["user"].weights.copy()
    same = reader.refresh(before)  # nothing new: nothing read, nothing copied
    assert same.versions == (1, 2) and same.tables["user"] is before.tables["user"]
    w.publish_delta({"user": rows("u", 3, 4, rng, start=0)}, 2)
    w.publish_delta({"note": rows("n", 2, 4, rng)}, 3)
    refreshed = reader.refresh(before)
    assert refreshed.versions == (1, 2, 3, 4)
    assert refreshed.manifest.version == 4
    expected = reader.load(4)
    assert_state(refreshed.tables, {k: as_dict(t) for k, t in expected.tables.items()})
    np.testing.assert_array_equal(before.tables["user"].weights, frozen)
    assert len(before.tables["user"].ids) == 43
    w.publish_full({"user": rows("u", 7, 4, rng)}, {}, 4, {})
    assert reader.refresh(refreshed).versions == (5,)


def manifest_on_disk(root: Path, version: int) -> Manifest:
    raw = (root / MODEL / f"{version:010d}" / MANIFEST).read_bytes()
    return msgspec.json.decode(raw, type=Manifest)


def test_versions_increase_across_writer_restarts(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    first = writer(tmp_path).publish_full({"user": rows("u", 3, 4, rng)}, {}, 1, {})
    (tmp_path / MODEL / f"{first.version + 1:010d}").mkdir()  # a damaged dir holds its number
    again = writer(tmp_path)  # a restarted writer
    delta = again.publish_delta({"user": rows("u", 1, 4, rng)}, 2)
    full = again.publish_full({"user": rows("u", 3, 4, rng)}, {}, 3, {})
    assert (first.version, delta.version, full.version) == (1, 3, 4)
    with pytest.raises(SnapshotConflictError, match="full version 4 is newer"):
        again.publish_delta({"user": rows("u", 1, 4, rng)}, 4, base_version=1)
    assert again.publish_delta({"user": rows("u", 1, 4, rng)}, 4, base_version=4).version == 5


@pytest.mark.parametrize(
    ("tables", "match"),
    [
        ({"user": TableRows(["a", "b"], np.zeros((3, 4), np.float32))}, "2 ids but 3 weight rows"),
        ({"user": TableRows(["a"], np.zeros((1, 4), np.float64))}, "2-d float32"),
        ({"user": TableRows(["a"], np.zeros(4, np.float32))}, "2-d float32"),
        ({"user": TableRows(["a", "a"], np.zeros((2, 4), np.float32))}, "unique"),
        ({"user": TableRows([1], np.zeros((1, 4), np.float32))}, "ids must be strings"),
    ],
)
def test_bad_rows_are_refused_with_the_table_named(
    tmp_path: Path, tables: dict[str, TableRows], match: str
) -> None:
    with pytest.raises(SnapshotError, match=match):
        writer(tmp_path).publish_full(tables, {}, 0, {})
    assert SnapshotReader(tmp_path, MODEL).versions() == []
    model_dir = tmp_path / MODEL
    assert not model_dir.exists() or [p.name for p in model_dir.iterdir()] == [".lock"]


def test_other_bad_input(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    w = writer(tmp_path)
    with pytest.raises(SnapshotError, match=r"no full snapshot.*publish_full first"):
        w.publish_delta({"user": rows("u", 1, 4, rng)}, 0)
    with pytest.raises(SnapshotError, match="meta must be JSON-able"):
        w.publish_full({"user": rows("u", 1, 4, rng)}, {}, 0, {"lr": object()})
    w.publish_full({"user": rows("u", 2, 4, rng)}, {}, 0, {})
    with pytest.raises(SnapshotError, match=r"dimension 5 differs .* 4"):
        w.publish_delta({"user": rows("u", 1, 5, rng)}, 0)
    with pytest.raises(SnapshotError, match="not usable as a directory name"):
        SnapshotReader(tmp_path, "../etc")
    reader = SnapshotReader(tmp_path, MODEL)
    with pytest.raises(SnapshotNotFoundError, match=r"no version 9 .*\(it has 1\)"):
        reader.load(9)
    with pytest.raises(SnapshotNotFoundError, match="no snapshot of model 'other'"):
        SnapshotReader(tmp_path, "other").latest()
    assert issubclass(SnapshotCorruptError, LearnersError)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "flip-tables": (TABLES, flip_byte, "sha256 does not match"),
    "flip-ids": (IDS, flip_byte, "sha256 does not match"),
    "truncate-tables": (TABLES, truncate, "bytes, the manifest says"),
    "remove-tables": (TABLES, Path.unlink, "is missing"),
    "remove-manifest": (MANIFEST, Path.unlink, "is missing"),
    "garble-manifest": (MANIFEST, flip_byte, "not a valid manifest"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_corrupt_delta_is_refused_and_latest_falls_back(tmp_path: Path, damage: str) -> None:
    file, hurt, detail = DAMAGE[damage]
    _, states = publish_history(tmp_path, np.random.default_rng(4))
    hurt(tmp_path / MODEL / f"{3:010d}" / file)
    reader = SnapshotReader(tmp_path, MODEL)
    for version in (3, 4):  # the damaged delta, and the one that builds on it
        with pytest.raises(SnapshotCorruptError) as err:
            reader.load(version)
        assert (err.value.version, err.value.file) == (3, file)
        assert detail in str(err.value) and "publish a new full snapshot" in str(err.value)
    assert_state(reader.load(2).tables, states[1])  # what precedes it is intact
    assert_state(reader.load(6).tables, states[5])  # and the next full's chain too
    listed = [m.version for m in reader.versions()]
    assert (3 in listed) == (detail == "sha256 does not match")  # checksums only when loading


@pytest.mark.parametrize("damage", ["flip-tables", "remove-manifest", "truncate-tables"])
def test_latest_falls_back_to_the_newest_consistent_state(tmp_path: Path, damage: str) -> None:
    file, hurt, _ = DAMAGE[damage]
    manifests, states = publish_history(tmp_path, np.random.default_rng(5))
    hurt(tmp_path / MODEL / f"{5:010d}" / file)  # the newest full
    skipped: list[SnapshotCorruptError] = []
    reader = SnapshotReader(tmp_path, MODEL, on_fallback=skipped.append)
    snapshot = reader.latest()
    assert snapshot.manifest == manifests[3] and snapshot.versions == (1, 2, 3, 4)
    assert_state(snapshot.tables, states[3])
    assert [(e.version, e.file) for e in skipped] == [(5, file), (6, None)]
    with pytest.raises(SnapshotCorruptError, match="version 5"):
        reader.latest(strict=True)


def test_latest_stops_before_a_corrupt_delta(tmp_path: Path) -> None:
    _, states = publish_history(tmp_path, np.random.default_rng(6))
    flip_byte(tmp_path / MODEL / f"{6:010d}" / TABLES)
    skipped: list[SnapshotCorruptError] = []
    snapshot = SnapshotReader(tmp_path, MODEL, on_fallback=skipped.append).latest()
    assert snapshot.versions == (5,)
    assert_state(snapshot.tables, states[4])
    assert [(e.version, e.file) for e in skipped] == [(6, TABLES)]


def test_nothing_usable_says_so(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.publish_full({"user": rows("u", 3, 4, np.random.default_rng(7))}, {}, 0, {})
    (tmp_path / MODEL / f"{1:010d}" / MANIFEST).unlink()
    with pytest.raises(SnapshotCorruptError, match=r"no full snapshot is usable.*manifest.json"):
        SnapshotReader(tmp_path, MODEL).latest()


def test_deltas_whose_full_was_deleted_are_not_listed(tmp_path: Path) -> None:
    _, states = publish_history(tmp_path, np.random.default_rng(12))
    shutil.rmtree(tmp_path / MODEL / f"{1:010d}")
    reader = SnapshotReader(tmp_path, MODEL)
    assert [m.version for m in reader.versions()] == [5, 6]
    assert [(e.version, e.file) for e in reader.problems()] == [(2, None), (3, None), (4, None)]
    with pytest.raises(SnapshotCorruptError, match="its base, full version 1, is missing"):
        reader.load(3)
    assert_state(reader.latest().tables, states[5])


def test_retention_keeps_the_newest_fulls_and_their_deltas(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    w = writer(tmp_path, keep_full=2)
    kinds = "FddFdFdF"
    for step, kind in enumerate(kinds):
        if kind == "F":
            w.publish_full({"user": rows("u", 20, 4, rng)}, {}, step, {})
        else:
            w.publish_delta({"user": rows("u", 3, 4, rng, start=step)}, step)
        on_disk = sorted(int(p.name) for p in (tmp_path / MODEL).iterdir() if p.name.isdigit())
        fulls = [v + 1 for v, k in enumerate(kinds[: step + 1]) if k == "F"]
        oldest = fulls[-2] if len(fulls) >= 2 else 1
        assert on_disk == list(range(oldest, step + 2))
    reader = SnapshotReader(tmp_path, MODEL)
    assert [m.version for m in reader.versions()] == [6, 7, 8]
    assert reader.load(7).versions == (6, 7)
    assert reader.latest().versions == (8,)
    assert not [p for p in (tmp_path / MODEL).iterdir() if p.name.startswith(".tmp")]


WRITER_LOOP = """
import sys
from pathlib import Path
import numpy as np
from learners.snapshots import SnapshotConfig, SnapshotWriter, TableRows

root, rows, round_ = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ids = [f"u{i}" for i in range(rows)]
w = SnapshotWriter(root, "mmoe", SnapshotConfig(root=root, keep_full=2))
step = 0
while True:
    tag = float(round_ * 1000 + step)
    if step % 3 == 0:
        table = TableRows(ids, np.full((rows, 16), tag, np.float32))
        w.publish_full({"user": table}, {"w": np.full(8, tag, np.float32)}, step, {"tag": tag})
    else:
        n = rows // 20
        start = (step * n) % rows
        table = TableRows(ids[start : start + n], np.full((n, 16), tag, np.float32))
        w.publish_delta({"user": table}, step, {"tag": tag})
    step += 1
"""


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")


def temp_dirs(model_dir: Path) -> list[Path]:
    return (
        [p for p in model_dir.iterdir() if p.name.startswith(".tmp-")] if model_dir.exists() else []
    )


def published(model_dir: Path) -> set[int]:
    if not model_dir.exists():
        return set()
    return {int(p.name) for p in model_dir.iterdir() if p.name.isdigit()}


def run_writer_and_kill(root: Path, round_: int, stage: str, leftovers: list[Path]) -> None:
    """Start the writer loop, let `round_ % 4` versions through, kill -9 it when at `stage`."""
    model_dir = root / MODEL
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_LOOP, str(root), "100000", str(round_)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    reader = SnapshotReader(root, MODEL)

    def progress(condition: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            assert proc.poll() is None, "the writer died on its own"
            assert reader.problems() == [], "a reader saw a partial version"
            return condition()

        return check

    def at_stage() -> bool:
        if stage == "renamed":
            return bool(published(model_dir) - before)
        temps = [t for t in temp_dirs(model_dir) if t not in leftovers]
        return bool(temps) and (stage == "temp" or any((t / stage).exists() for t in temps))

    try:
        before = published(model_dir)
        warmup = round_ % 4
        wait_for(progress(lambda: len(published(model_dir) - before) >= warmup), "warm-up")
        before = published(model_dir)
        wait_for(progress(at_stage), f"round {round_}: the writer reaching {stage}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def test_reader_never_sees_a_partial_version_when_the_writer_is_killed(tmp_path: Path) -> None:
    model_dir = tmp_path / MODEL
    reader = SnapshotReader(tmp_path, MODEL)
    # kill points: a publish has just begun, amid each file, just after a rename (or prune)
    stages = ["temp", TABLES, IDS, "dense.safetensors", "renamed"] * 2
    seen_max = 0
    leftovers: list[Path] = []
    for round_, stage in enumerate(stages):
        start = published(model_dir)
        run_writer_and_kill(tmp_path, round_, stage, leftovers)
        # the killed writer's temp dir (if any) is ignored; earlier leftovers were cleaned
        assert not set(leftovers) & set(temp_dirs(model_dir))
        assert reader.problems() == []
        versions = [m.version for m in reader.versions()]
        assert versions == sorted(set(versions))
        new = [v for v in versions if v not in start]
        assert all(v > seen_max for v in new), "version numbers must keep increasing"
        seen_max = max([seen_max, *versions])
        for manifest in reader.versions():
            snapshot = reader.load(manifest.version)  # verifies every checksum
            assert snapshot.tables["user"].weights.shape == (100_000, 16)
            if manifest.kind == "full":
                tag = manifest.meta["tag"]
                assert (snapshot.tables["user"].weights == tag).all()
                assert (snapshot.dense["w"] == tag).all()
        if versions:
            assert reader.latest().manifest.version == versions[-1]
        leftovers = temp_dirs(model_dir)
    assert seen_max >= 12, "the rounds published fulls and deltas"
    assert {m.kind for m in reader.versions()} == {"full", "delta"}


def test_announcements_round_trip_through_the_broker(
    tmp_path: Path, bootstrap: str, announce_topic: str
) -> None:
    rng = np.random.default_rng(9)
    w = writer(tmp_path, announce=kafka_announcer(bootstrap, announce_topic))
    sent = [w.publish_full({"user": rows("u", 10, 4, rng)}, {"b": np.zeros(2)}, 5, {"k": 1})]
    sent += [w.publish_delta({"user": rows("u", 2, 4, rng, start=k)}, 6 + k) for k in range(2)]
    records = [r for batch in read_to_end(bootstrap, announce_topic) for r in batch]
    assert [r.key for r in records] == [MODEL.encode()] * 3
    assert [decode_announcement(r.value) for r in records] == sent
    carried: list = []  # what a consumer (kafka-python, as serving) reads: headers too
    with Announcements(bootstrap, announce_topic, from_beginning=True) as follower:
        deadline = time.monotonic() + 30
        while len(carried) < 3 and time.monotonic() < deadline:
            carried += follower.poll(0.2)
    assert [a.manifest for a in carried] == sent
    assert [sorted(a.files) for a in carried] == [[], [IDS, TABLES], [IDS, TABLES]]  # deltas
    assert carried[1].files[TABLES] == (tmp_path / MODEL / "0000000002" / TABLES).read_bytes()
    assert carried[2].location == str(tmp_path / MODEL / "0000000003")
    with pytest.raises(SnapshotError, match="not a snapshot announcement"):
        decode_announcement(b"{not json")
    with pytest.raises(SnapshotError, match="version"):
        decode_announcement(b'{"model": "m", "version": "one"}')
    with pytest.raises(SnapshotError, match="kind must be"):
        decode_announcement(encode_manifest(replace(sent[0], kind="partial")))


def test_cli_list_and_show(tmp_path: Path) -> None:
    publish_history(tmp_path, np.random.default_rng(10))
    flip_byte(tmp_path / MODEL / f"{3:010d}" / TABLES)
    (tmp_path / MODEL / f"{4:010d}" / MANIFEST).unlink()
    runner = CliRunner()
    done = runner.invoke(
        app, ["snapshots", "list", "--root", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert done.exit_code == 0, done.output
    assert "delta" in done.output and "full" in done.output
    assert "unusable:" in done.output and "version 4: manifest.json: is missing" in done.output
    done = runner.invoke(
        app, ["snapshots", "show", "6", "--root", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert done.exit_code == 0, done.output
    assert "state = versions 5, 6 (checksums verified)" in done.output
    done = runner.invoke(app, ["snapshots", "show", "3", "--model", MODEL, "--root", str(tmp_path)])
    assert done.exit_code == 2
    assert "version 3: tables.safetensors: sha256 does not match" in " ".join(done.output.split())
