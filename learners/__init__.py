"""Ranking and retrieval models, online and full training, embedding snapshots.

Consume published snapshots (no torch needed for this part)::

    from learners import SnapshotReader, SnapshotSubscriber

    snap = SnapshotReader(root, "retriever").latest()  # newest verified full + its deltas
    vectors = snap.tables["item"]                       # ids + (n, d) float32 weights
    with SnapshotSubscriber(bootstrap, "embedding-snapshots", root, "retriever", snap) as sub:
        for snap in sub:                                # each newer verified version
            ...

Score with the published models (torch)::

    from learners import Ranker, Retriever

    ranker = Ranker.from_snapshot(SnapshotReader(root, "ranker").latest())
    scores = ranker.score(user_id, note_ids, author_ids, categories, user_stats, note_stats)
    # PreRanker (three towers, item tower cached per snapshot) scores the same way

Train: `run_full` (full training over the sample log, `streamrec learn full`) and
`OnlineLearner` (ID embeddings from `training-samples`, `streamrec learn online`), configured
by `LearnConfig`, `RankerConfig`, `RetrieverConfig` and `SnapshotConfig`. Every error raised
here is a `LearnersError`.

Names are imported on first use (PEP 562), so `from learners import SnapshotReader` loads
neither torch nor the training code, and serving's `Ranker` / `Retriever` never load the
training code either (`learners.inference` builds on `learners.models` only).
"""

from __future__ import annotations

from features.lazy import lazy_exports

_EXPORTS = {
    # snapshots (numpy, safetensors; no torch)
    "Exports": "learners.snapshots",
    "Manifest": "learners.snapshots",
    "Snapshot": "learners.snapshots",
    "SnapshotConfig": "learners.snapshots",
    "SnapshotReader": "learners.snapshots",
    "SnapshotWriter": "learners.snapshots",
    "TableRows": "learners.snapshots",
    "Publication": "learners.snapshots",
    "apply_delta": "learners.snapshots",
    "decode_announcement": "learners.snapshots",
    "check_writable": "learners.snapshots",
    "list_models": "learners.snapshots",
    "Announcement": "learners.subscription",
    "Announcements": "learners.subscription",
    "kafka_announcer": "learners.subscription",
    "SnapshotSubscriber": "learners.subscription",
    "follow_snapshots": "learners.subscription",
    # settings and hyperparameters
    "EmbeddingConfig": "learners.config",
    "LearnConfig": "learners.config",
    "RankerConfig": "learners.config",
    "RetrieverConfig": "learners.config",
    "PreRankerConfig": "learners.preranker",
    # errors
    "LearnersError": "learners.errors",
    "ModelConfigError": "learners.errors",
    "SampleInputError": "learners.errors",
    "SnapshotError": "learners.errors",
    "SnapshotNotFoundError": "learners.errors",
    "SnapshotCorruptError": "learners.errors",
    "SnapshotFollowError": "learners.errors",
    "SnapshotRootNotWritableError": "learners.errors",
    "SnapshotPublishError": "learners.errors",
    # scoring (torch)
    "Ranker": "learners.inference",
    "Retriever": "learners.inference",
    "PreRanker": "learners.preranker",
    # training (torch)
    "OnlineLearner": "learners.online",
    "run_full": "learners.full",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
