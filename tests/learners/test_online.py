"""Online and full learners: dense parameters frozen online, snapshots round-trip to serving."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from features.samples import encode_batch
from features.schema import FeatureConfig
from infra.stack import ensure_topics
from learners.inference import Ranker, Retriever
from learners.online import Message, NoFullSnapshotError, OnlineLearner, kafka_messages
from learners.snapshots import SnapshotConfig, SnapshotReader
from learners.training import ITEM_TABLE, RankerState, RetrieverState
from streams.kafka_io import make_producer
from tests.learners.helpers import CONFIG, Clock, messages, publish_trained, synthetic, to_batch


def test_online_mode_changes_id_embeddings_only(tmp_path: Path) -> None:
    snapshots = publish_trained(tmp_path)
    clock = Clock()
    learner = OnlineLearner.from_latest(CONFIG, snapshots, clock=clock)
    dense = {
        name: {k: v.clone() for k, v in state.model.state_dict().items()}
        for name, state in (("r", learner.ranker), ("t", learner.retriever))
    }
    defaults = {
        (name, t): state.store[t].weight[0].clone()
        for name, state in (("r", learner.ranker), ("t", learner.retriever))
        for t in state.store.tables
    }
    user_before = learner.ranker.store["user"].weight.clone()
    known = len(learner.ranker.store["user"])
    msgs = messages(seed=12, n=3_000, users=400)
    learner.run(iter(msgs))
    for name, state in (("r", learner.ranker), ("t", learner.retriever)):
        after = state.model.state_dict()
        assert all(torch.equal(after[k], v) for k, v in dense[name].items())  # bit-identical
        for t in state.store.tables:  # the shared default rows are frozen with the dense layers
            assert torch.equal(state.store[t].weight[0], defaults[(name, t)])
    assert learner.ranker.store["user"].config.lr == CONFIG.online_emb_lr
    assert len(learner.ranker.store["user"]) > known  # new users admitted on the fly
    rows = learner.ranker.store["user"].weight[: user_before.shape[0]]
    assert not torch.equal(rows, user_before)  # known rows trained
    assert learner.report.samples > 0 and learner.offsets == {0: len(msgs)}


def test_deltas_publish_changed_rows_and_serving_scores_match(tmp_path: Path) -> None:
    snapshots = publish_trained(tmp_path)
    clock = Clock()
    learner = OnlineLearner.from_latest(CONFIG, snapshots, clock=clock)
    msgs = messages(seed=13, n=2_000, users=300)
    for m in msgs[:5]:
        learner.add(m)
    clock.now = 11.0
    learner.flush()
    published = learner.tick()
    assert [m.kind for m in published] == ["delta", "delta"]
    assert published[0].meta["offsets"] == {"0": 5}
    full_rows = SnapshotReader(tmp_path, "ranker").load(1).manifest.rows["user"]
    assert 0 < published[0].rows["user"] < full_rows + 300  # changed rows only
    assert learner.tick() == []  # not due again
    snap = SnapshotReader(tmp_path, "ranker").latest()
    ranker = Ranker.from_snapshot(snap)
    cols, _ = synthetic(50, seed=14, users=300)
    n = 10
    for j in range(3):
        served = ranker.score(
            cols.user_id[j],
            cols.note_id[:n],
            cols.author_id[:n],
            cols.category[:n],
            cols.user_stats[j],
            cols.note_stats[:n],
            cols.position[:n],
        )
        one_user = replace(
            cols.take(np.arange(n)),
            user_id=[cols.user_id[j]] * n,
            user_stats=np.repeat(cols.user_stats[j : j + 1], n, axis=0),
        )
        mine = learner.ranker.predict(one_user)
        assert set(served) == set(mine)
        for task, values in mine.items():
            np.testing.assert_array_equal(served[task], values)
    retriever = Retriever.from_snapshot(SnapshotReader(tmp_path, "retriever").latest())
    ids, vecs = retriever.item_vectors()
    mine_ids, mine_vecs = learner.retriever.item_vectors()
    assert sorted(ids) == sorted(mine_ids)
    order = {n: j for j, n in enumerate(mine_ids)}
    np.testing.assert_array_equal(vecs, mine_vecs[[order[n] for n in ids]])
    u = retriever.user_vector(cols.user_id[0], cols.user_stats[0])
    np.testing.assert_array_equal(
        u, learner.retriever.user_vectors(cols.user_id[:1], cols.user_stats[:1])[0]
    )
    sub_ids, sub = retriever.item_vectors([ids[1], "never-seen", ids[0]])
    assert sub_ids == [ids[1], ids[0]] and sub.shape == (2, retriever.dim)


def test_restart_resumes_from_the_published_offsets(tmp_path: Path) -> None:
    snapshots = publish_trained(tmp_path)
    learner = OnlineLearner.from_latest(CONFIG, snapshots, clock=Clock())
    learner.run(iter(messages(seed=15, n=1_000)), until_end=True)
    again = OnlineLearner.from_latest(CONFIG, snapshots, clock=Clock())
    assert again.offsets == learner.offsets
    assert len(again.ranker.store["note"]) == len(learner.ranker.store["note"])
    assert ITEM_TABLE in SnapshotReader(tmp_path, "retriever").latest().tables


def test_bad_messages_are_dead_lettered_and_the_learner_goes_on(tmp_path: Path) -> None:
    snapshots = publish_trained(tmp_path)
    dead: list[tuple[Message, str]] = []
    learner = OnlineLearner.from_latest(
        CONFIG, snapshots, on_dead_letter=lambda m, r: dead.append((m, r)), clock=Clock()
    )
    good = messages(seed=16, n=300)
    learner.run(
        iter(
            [Message(0, 0, b"{not json"), *[Message(0, i + 1, m.value) for i, m in enumerate(good)]]
        )
    )
    assert len(dead) == 1 and dead[0][0].offset == 0 and "json" in dead[0][1].lower()
    assert learner.report.samples > 0


def test_online_needs_a_full_snapshot(tmp_path: Path) -> None:
    with pytest.raises(NoFullSnapshotError, match="learn full"):
        OnlineLearner.from_latest(CONFIG, SnapshotConfig(root=tmp_path))


def test_full_training_warm_starts_from_the_latest_snapshot(tmp_path: Path) -> None:
    snapshots = publish_trained(tmp_path)
    from learners.full import load_or_create

    ranker, retriever, versions, _ = load_or_create(CONFIG, snapshots)
    assert versions == {"ranker": 1, "retriever": 1}
    published = RankerState.from_snapshot(SnapshotReader(tmp_path, "ranker").latest())
    for a, b in zip(ranker.dense_parameters(), published.dense_parameters(), strict=True):
        assert torch.equal(a, b)
    assert isinstance(retriever, RetrieverState) and len(retriever.side) > 0


def test_kafka_reader_assigns_partitions_and_stops_at_the_end(
    bootstrap: str, topic_name: str
) -> None:
    topic = f"{topic_name}-samples"
    ensure_topics(bootstrap, [topic], 2)
    producer = make_producer(bootstrap)
    msgs = messages(seed=17, n=500)
    for i, m in enumerate(msgs):
        producer.produce(topic, key=f"k{i}".encode(), value=m.value, partition=i % 2)
    producer.flush(10)
    got = [m for m in kafka_messages(bootstrap, topic, {}, until_end=True) if m is not None]
    assert len(got) == len(msgs)
    resumed = [m for m in kafka_messages(bootstrap, topic, {0: 2, 1: 2}, until_end=True) if m]
    assert len(resumed) == len(msgs) - 4


def test_a_note_new_since_the_full_gets_its_side_info_through_deltas(tmp_path: Path) -> None:
    snapshots = publish_trained(tmp_path)
    clock = Clock()
    learner = OnlineLearner.from_latest(CONFIG, snapshots, clock=clock)
    cols, _ = synthetic(300, seed=15)
    k = 20
    fresh = replace(
        cols,
        note_id=["n-new"] * k + cols.note_id[k:],
        author_id=["a-new"] * k + cols.author_id[k:],
        category=["c-new"] * k + cols.category[k:],
        labels={**cols.labels, "click": np.r_[np.ones(k), cols.labels["click"][k:]]},
    )
    reader = SnapshotReader(tmp_path, "retriever")
    before = Retriever.from_snapshot(reader.latest())
    assert before.side_info(["n-new"]) == ([""], [""])  # unknown to the full
    learner.add(Message(0, 0, encode_batch(to_batch(fresh, "new"))))
    clock.now = 11.0
    assert [m.kind for m in learner.tick()] == ["delta", "delta"]
    first = reader.latest()
    assert "n-new" in first.tables[ITEM_TABLE].ids
    learner.add(Message(0, 1, encode_batch(to_batch(cols.take(np.arange(k, 300)), "old"))))
    clock.now = 22.0
    learner.tick()  # a later delta without the note: its side info must survive
    for snap in (reader.latest(), reader.refresh(first)):
        assert len(snap.versions) == 3
        assert Retriever.from_snapshot(snap).side_info(["n-new"]) == (["a-new"], ["c-new"])


def test_a_fresh_ranker_takes_the_settings_priors_a_warm_one_keeps_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from learners.full import load_or_create

    priors = FeatureConfig(ctr_prior=0.2)
    fresh, _, versions, _ = load_or_create(
        CONFIG, SnapshotConfig(root=tmp_path / "none"), features=priors
    )
    assert versions["ranker"] is None and fresh.config.priors == priors
    snapshots = publish_trained(tmp_path)
    warm, _, _, _ = load_or_create(CONFIG, snapshots, features=priors)
    assert warm.config.priors == FeatureConfig()  # what it was trained with
    assert "keeps its own" in caplog.text
