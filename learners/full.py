"""Full training: all parameters, warm start from the latest snapshot, one shuffled pass.

Reads the joiner's parquet log, trains the ranker and the retriever (Adam on the dense
parameters, row-wise Adagrad on the ID rows) and publishes a full snapshot of each. A model
without a snapshot starts from a fresh initialisation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from features.schema import FeatureConfig
from learners.config import LearnConfig, RankerConfig, RetrieverConfig
from learners.export import snapshot_exports
from learners.inputs import Columns
from learners.preranker import PreRankerConfig
from learners.snapshots import (
    Manifest,
    Publication,
    SnapshotConfig,
    SnapshotNotFoundError,
    SnapshotReader,
    SnapshotWriter,
    check_writable,
    publish_failed,
)
from learners.training import (
    PreRankerState,
    RankerState,
    RetrieverState,
    applied_offsets,
    check_priors,
)

logger = logging.getLogger(__name__)


@dataclass
class FullReport:
    """What a full training did."""

    samples: int = 0
    seconds: float = 0.0
    warm_start: dict[str, int | None] = field(default_factory=dict)
    """Model -> snapshot version it started from (None = fresh)."""
    published: list[Manifest] = field(default_factory=list)
    ranker_loss: float = float("nan")
    """Mean ranker loss over the last tenth of the pass."""
    gate_entropy: float = float("nan")
    """Mean gate entropy over the last tenth of the pass (MMoE)."""


def load_or_create(
    config: LearnConfig,
    snapshots: SnapshotConfig,
    ranker: RankerConfig | None = None,
    retriever: RetrieverConfig | None = None,
    features: FeatureConfig | None = None,
) -> tuple[RankerState, RetrieverState, dict[str, int | None], dict]:
    """The latest published models (or fresh ones), their versions, and the offsets meta.

    The offsets are those both models have applied (`learners.training.applied_offsets`: per
    partition the minimum; a fresh model has applied none), so the online learner that
    resumes from the fulls published next skips no sample for either model.

    `features` (`Settings.features`) gives a fresh ranker the feature store's priors to smooth
    its window rates towards; a warm-started one keeps those it was trained with
    (`learners.training.check_priors` warns when they differ).
    """
    emb = config.embedding(16)
    versions: dict[str, int | None] = {}
    metas: list[dict | None] = []
    try:
        snap = SnapshotReader(snapshots.location, config.ranker_model).latest()
        r = RankerState.from_snapshot(snap)
        check_priors(r, features)
        versions["ranker"] = snap.manifest.version
        metas.append(snap.manifest.meta)
    except SnapshotNotFoundError:
        hyper = ranker or RankerConfig(history=config.ranker_history)
        if features is not None:
            hyper = replace(hyper, priors=features)
        r = RankerState.create(hyper, emb, seed=config.seed)
        versions["ranker"] = None
        metas.append(None)
    try:
        snap = SnapshotReader(snapshots.location, config.retriever_model).latest()
        t = RetrieverState.from_snapshot(snap)
        versions["retriever"] = snap.manifest.version
        metas.append(snap.manifest.meta)
    except SnapshotNotFoundError:
        fresh = retriever or RetrieverConfig(history=config.retriever_history)
        t = RetrieverState.create(fresh, emb, seed=config.seed)
        versions["retriever"] = None
        metas.append(None)
    offsets = {str(p): o for p, o in applied_offsets(metas).items()}
    return r, t, versions, offsets


def train_pass(
    ranker: RankerState,
    retriever: RetrieverState,
    cols: Columns,
    config: LearnConfig,
    shuffle: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> FullReport:
    """One pass over `cols` (shuffled with `config.seed`), every parameter of both models."""
    report = FullReport(samples=len(cols))
    order = np.arange(len(cols))
    if shuffle:
        np.random.default_rng(config.seed).shuffle(order)
    cols = cols.take(order)
    opts = {
        "ranker": torch.optim.Adam(ranker.dense_parameters(), lr=config.dense_lr),
        "retriever": torch.optim.Adam(retriever.dense_parameters(), lr=config.dense_lr),
    }
    for m in (ranker, retriever):
        m.unfreeze()
        m.set_id_dropout(config.id_dropout, config.seed)
    t0 = time.perf_counter()
    batches = cols.batches(config.batch_size)
    tail = max(1, len(batches) // 10)
    losses, entropies = [], []
    for i, batch in enumerate(batches):
        res = ranker.train_step(batch, opts["ranker"])
        retriever.train_step(batch, opts["retriever"])
        if i >= len(batches) - tail:
            losses.append(res.loss)
            entropies.append(res.gate_entropy)
        if on_progress is not None:
            on_progress(len(batch))
    ranker.fit_base(cols)
    ranker.recalibrate(cols)
    report.seconds = time.perf_counter() - t0
    report.ranker_loss = float(np.mean(losses)) if losses else float("nan")
    report.gate_entropy = float(np.mean(entropies)) if entropies else float("nan")
    return report


def run_full(
    log_dir: Path | str,
    config: LearnConfig,
    snapshots: SnapshotConfig,
    announce: Callable[[Publication], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    features: FeatureConfig | None = None,
) -> FullReport:
    """Warm start, one shuffled pass over the log in `log_dir`, publish full snapshots of both.

    `features`: the feature store's priors (`Settings.features`) for a fresh ranker.

    Raises:
        SnapshotRootNotWritableError: before anything is read or trained, when the snapshot
            root cannot take the new versions (`learners.snapshots.check_writable`).
        SnapshotPublishError: writing a version failed (e.g. the disk filled up meanwhile).
    """
    from features.samples import read_sample_log

    pre_name = config.preranker_model
    models = (config.ranker_model, config.retriever_model, *([pre_name] if pre_name else []))
    check_writable(snapshots.location, models)
    torch.set_num_threads(config.threads)
    cols = Columns.from_table(read_sample_log(log_dir))
    if on_start is not None:
        on_start(len(cols))
    ranker, retriever, versions, offsets = load_or_create(config, snapshots, features=features)
    report = train_pass(ranker, retriever, cols, config, on_progress=on_progress)
    report.warm_start = versions
    states: list[tuple[str, RankerState | RetrieverState | PreRankerState]] = [
        (config.ranker_model, ranker),
        (config.retriever_model, retriever),
    ]
    if pre_name:
        pre, report.warm_start["preranker"] = load_or_create_preranker(config, snapshots, ranker)
        prerank_pass(pre, cols, config, teacher=ranker)
        states.append((pre_name, pre))
    for name, state in states:
        state.expire(state.hwm_ms)
        tables, dense = state.full_state()
        meta = state.meta({"offsets": offsets, "full_training_samples": len(cols)})
        writer = SnapshotWriter(snapshots.location, name, snapshots, announce)
        try:
            report.published.append(
                writer.publish_full(tables, dense, state.hwm_ms, meta, snapshot_exports(state))
            )
        except OSError as exc:
            raise publish_failed(name, snapshots.location, exc) from exc
    return report


def prerank_pass(
    preranker: PreRankerState,
    cols: Columns,
    config: LearnConfig,
    teacher: RankerState | None = None,
    shuffle: bool = True,
) -> float:
    """One pass of the pre-ranker over `cols` (shuffled with `config.seed`), every parameter;
    with a `teacher` (the trained ranker) it also learns the ranker's predictions
    (`PreRankerConfig.distill`); then fits its logit offsets (`PreRankerState.recalibrate`).
    Returns the mean loss over the last tenth of the pass."""
    order = np.arange(len(cols))
    if shuffle:
        np.random.default_rng(config.seed).shuffle(order)
    cols = cols.take(order)
    opt = torch.optim.Adam(preranker.dense_parameters(), lr=config.dense_lr)
    preranker.unfreeze()
    preranker.set_id_dropout(config.id_dropout, config.seed)
    batches = cols.batches(config.batch_size)
    tail = max(1, len(batches) // 10)
    losses = [preranker.train_step(b, opt, teacher).loss for b in batches][-tail:]
    preranker.recalibrate(cols)
    return float(np.mean(losses)) if losses else float("nan")


def load_or_create_preranker(
    config: LearnConfig, snapshots: SnapshotConfig, ranker: RankerState
) -> tuple[PreRankerState, int | None]:
    """The latest published pre-ranker (or a fresh one with the ranker's priors) and its
    version (None = fresh)."""
    try:
        snap = SnapshotReader(snapshots.location, config.preranker_model).latest()
    except SnapshotNotFoundError:
        hyper = PreRankerConfig(priors=ranker.config.priors)
        return PreRankerState.create(hyper, config.embedding(16), seed=config.seed), None
    return PreRankerState.from_snapshot(snap), snap.manifest.version
