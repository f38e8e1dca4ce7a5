"""One commit for both models: a restart resumes where both models are, and each model gets
only what it has not applied.

The ranker and the retriever are published one after the other, each version carrying the
offsets it has applied. These tests break the second publish (disk full) or lose the
retriever's newest version (what a kill -9 or a damaged disk can leave) and then count, per
model, the samples it applied across the crash against the samples produced: none may be
skipped and none applied twice (docs/learning.md "Restarts").
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

import learners.snapshots as snapshots_mod
from features.samples import decode_batch
from learners.errors import LearnersError
from learners.inputs import Columns
from learners.online import Message, OnlineLearner
from learners.snapshots import SnapshotConfig, SnapshotReader
from tests.learners.helpers import CONFIG, Clock, messages, publish_trained

MODELS = ("ranker", "retriever")


def _samples_of(msgs: list[Message]) -> dict[int, set[int]]:
    """Offset -> the samples (their unique event times) the message holds."""
    return {
        m.offset: set(Columns.from_samples(decode_batch(m.value).samples).ts.tolist()) for m in msgs
    }


def _recording(learner: OnlineLearner) -> dict[str, set[int]]:
    """Per model, the samples `learner` trains it on from now on."""
    seen: dict[str, set[int]] = {m: set() for m in MODELS}
    train = learner.train

    def recorded(cols: Columns, models: tuple[str, ...] = MODELS) -> None:
        for m in models:
            seen[m].update(cols.ts.tolist())
        train(cols, models)

    learner.train = recorded  # type: ignore[method-assign]
    return seen


def _persisted_offsets(root: Path) -> dict[str, int]:
    """Model -> next offset of partition 0 its newest readable version has applied."""
    out = {}
    for model in MODELS:
        offsets = SnapshotReader(root, model, on_fallback=lambda _e: None).latest().manifest.meta
        out[model] = int(offsets["offsets"].get("0", 0))
    return out


def _feed(learner: OnlineLearner, clock: Clock, msgs: list[Message], tick_at: float) -> None:
    for m in msgs:
        learner.add(m)
    clock.now = tick_at
    learner.tick()


def _assert_nothing_skipped(
    msgs: list[Message],
    first_run: dict[str, set[int]],
    persisted: dict[str, int],
    second_run: dict[str, set[int]],
) -> dict[str, int]:
    """Per model: what survived the crash + what the restart applied == every sample produced.

    Returns the samples each model applied twice.
    """
    by_offset = _samples_of(msgs)
    produced = set().union(*by_offset.values())
    twice = {}
    for model, upto in persisted.items():
        survived = first_run[model] & set().union(*(by_offset[o] for o in range(upto)))
        applied = survived | second_run[model]
        missing = produced - applied
        assert not missing, f"{model} skipped {len(missing)} of {len(produced)} samples"
        twice[model] = len(survived & second_run[model])
    return twice


def _restart_and_finish(
    snapshots: SnapshotConfig, msgs: list[Message]
) -> tuple[OnlineLearner, dict[str, set[int]]]:
    again = OnlineLearner.from_latest(CONFIG, snapshots, clock=Clock())
    second = _recording(again)
    start = again.offsets.get(0, 0)  # what kafka_messages would resume from
    again.run(iter(m for m in msgs if m.offset >= start), until_end=True)
    return again, second


@pytest.mark.parametrize("kind", ["delta", "full"])
def test_disk_full_between_the_two_publishes_skips_no_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    snapshots = publish_trained(tmp_path)
    msgs = messages(seed=31, n=3_000, users=300)  # 30 messages of 100 samples
    clock = Clock()
    learner = OnlineLearner.from_latest(CONFIG, snapshots, clock=clock)
    first = _recording(learner)
    _feed(learner, clock, msgs[:10], 11.0)  # both models publish offsets 10

    write = snapshots_mod._write_synced
    failed = []

    def disk_full_for_the_retriever(path: Path, data: bytes) -> None:
        if "retriever" in Path(path).parts and not failed:
            failed.append(path)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write(path, data)

    monkeypatch.setattr(snapshots_mod, "_write_synced", disk_full_for_the_retriever)
    with pytest.raises((OSError, LearnersError), match="No space left"):  # the learner stops
        _feed(learner, clock, msgs[10:20], 22.0 if kind == "delta" else 3_700.0)
    assert failed
    persisted = _persisted_offsets(tmp_path)
    assert persisted == {"ranker": 20, "retriever": 10}  # the ranker got one version further
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "retriever").iterdir())

    again, second = _restart_and_finish(snapshots, msgs)
    assert again.offsets == {0: len(msgs)}
    twice = _assert_nothing_skipped(msgs, first, persisted, second)
    assert twice == {"ranker": 0, "retriever": 0}  # the ranker skips the 10 it already has
    assert len(second["ranker"]) == 1_000 and len(second["retriever"]) == 2_000
    for model in MODELS:  # and both models end at the same offsets
        assert SnapshotReader(tmp_path, model).latest().manifest.meta["offsets"] == {"0": 30}


@pytest.mark.parametrize("damage", ["deleted", "corrupt"])
def test_a_lost_newest_retriever_version_resumes_no_later_than_the_retriever(
    tmp_path: Path, damage: str
) -> None:
    snapshots = publish_trained(tmp_path)
    msgs = messages(seed=32, n=3_000, users=300)
    clock = Clock()
    learner = OnlineLearner.from_latest(CONFIG, snapshots, clock=clock)
    first = _recording(learner)
    for i, t in enumerate((11.0, 22.0, 33.0)):  # versions 2, 3, 4 of each: offsets 7, 14, 21
        _feed(learner, clock, msgs[7 * i : 7 * (i + 1)], t)
    newest = tmp_path / "retriever" / "0000000004"
    assert newest.is_dir()
    if damage == "deleted":  # as if the rename had never reached the disk
        shutil.rmtree(newest)
    else:  # same size, other bytes: caught by the sha256 check
        tables = newest / "tables.safetensors"
        data = bytearray(tables.read_bytes())
        data[-1] ^= 0xFF
        tables.write_bytes(bytes(data))
    persisted = _persisted_offsets(tmp_path)
    assert persisted == {"ranker": 21, "retriever": 14}

    again = OnlineLearner.from_latest(CONFIG, snapshots, clock=Clock())
    held = SnapshotReader(tmp_path, "retriever", on_fallback=lambda _e: None).latest()
    for p, o in again.offsets.items():  # no later than what the retriever holds
        assert o <= int(held.manifest.meta["offsets"].get(str(p), 0))
    assert again.offsets == {0: 14}
    second = _recording(again)
    again.run(iter(msgs[14:]), until_end=True)
    twice = _assert_nothing_skipped(msgs, first, persisted, second)
    assert twice == {"ranker": 0, "retriever": 0}
    assert len(second["ranker"]) == 900 and len(second["retriever"]) == 1_600
    # the learner's first publish after the restart is a full, so what it publishes next
    # applies even after a damaged version (deltas never chain over one)
    snap = SnapshotReader(tmp_path, "retriever", on_fallback=lambda _e: None).latest()
    assert snap.manifest.meta["offsets"] == {"0": len(msgs)}


def test_applied_offsets_is_the_per_partition_minimum() -> None:
    from learners.training import applied_offsets

    ranker = {"offsets": {"0": 20, "1": 5, "2": 9}}
    retriever = {"offsets": {"0": 10, "1": 7}}
    assert applied_offsets([ranker, retriever]) == {0: 10, 1: 5}  # 2: from the beginning
    assert applied_offsets([ranker, None]) == {}  # a fresh model has applied nothing
    assert applied_offsets([ranker, {}]) == {}  # a snapshot without offsets: nothing either
    assert applied_offsets([ranker]) == {0: 20, 1: 5, 2: 9}


def test_full_training_records_the_offsets_both_models_have_applied(tmp_path: Path) -> None:
    from learners.full import load_or_create

    snapshots = publish_trained(tmp_path)
    clock = Clock()
    learner = OnlineLearner.from_latest(CONFIG, snapshots, clock=clock)
    msgs = messages(seed=33, n=2_000, users=300)
    _feed(learner, clock, msgs[:10], 11.0)
    shutil.rmtree(tmp_path / "retriever" / "0000000002")  # the retriever is back at the full
    _, _, _, offsets = load_or_create(CONFIG, snapshots)
    assert offsets == {}  # the fulls held none, so the retriever has applied none
