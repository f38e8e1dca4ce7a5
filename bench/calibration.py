"""Calibration under the production negative down-sampling, prequential.

The joiner keeps an unclicked sample with probability a (`SamplesConfig.negative_keep_rate`,
0.25) and marks it with `keep_rate` a; the ranker is trained on that and corrects at prediction
(click: p = a q / (1 - q + a q) plus the logit offset full training fits; the other tasks are
importance weighted in the loss). This replays a stream the way production sees it: the warm-up
and every batch are down-sampled before the model learns from them, while each batch is scored
whole, before learning, so predicted and observed rates are compared on every impression.
Reported per task: mean predicted / observed rate in each fifth of the scored stream.
"""

from __future__ import annotations

import itertools

import numpy as np
from rich.progress import Progress

from learners.config import LearnConfig, RankerConfig, RetrieverConfig
from learners.full import train_pass
from learners.inputs import Columns
from learners.training import RankerState, RetrieverState
from streams.samples import keep_draw

FIFTHS = 5


def downsample(cols: Columns, a: float) -> Columns:
    """The samples the joiner would keep at negative keep rate `a`, with their `keep_rate`.

    The draw is fixed by (user, note, time), as the joiner's is by the sample id.
    """
    draws = np.array(
        [
            keep_draw(f"{u}:{n}:{t}")
            for u, n, t in zip(cols.user_id, cols.note_id, cols.ts, strict=True)
        ]
    )
    clicked = cols.labels["click"] > 0
    keep = np.flatnonzero(clicked | (draws < a))
    out = cols.take(keep)
    rate = np.where(out.labels["click"] > 0, 1.0, a).astype(np.float32)
    return Columns(**{**out.__dict__, "keep_rate": rate})


def warm_up(
    warm: Columns,
    config: LearnConfig,
    ranker_config: RankerConfig,
    retriever_config: RetrieverConfig,
    warm_batch: int,
    warm_epochs: int,
) -> tuple[RankerState, RetrieverState]:
    """Fresh models fully trained on `warm`: `warm_epochs` shuffled passes in batches of
    `warm_batch` (seeds `config.seed` + pass), as both `bench.quality` and `calibration` train."""
    emb = config.embedding(16)
    ranker = RankerState.create(ranker_config, emb, seed=config.seed)
    retriever = RetrieverState.create(retriever_config, emb, seed=config.seed)
    for epoch in range(warm_epochs):
        update = {"batch_size": warm_batch, "seed": config.seed + epoch}
        train_pass(ranker, retriever, warm, config.model_copy(update=update))
    return ranker, retriever


def calibration(
    warm: Columns,
    rest: list[Columns],
    tasks: tuple[str, ...],
    a: float,
    config: LearnConfig,
    ranker_config: RankerConfig,
    warm_batch: int,
    warm_epochs: int,
    progress: Progress,
    name: str,
) -> dict[str, list[float]]:
    """Per task, mean predicted / observed rate in each fifth of `rest` (NaN: no positive).

    The ranker is trained as `bench.quality.prequential` trains it, on down-sampled data; it
    scores each batch whole (calibrated), then learns from its down-sampled part (ID rows only,
    the logit offsets refit on its predictions before learning, as `OnlineLearner` does).
    """
    ranker, _ = warm_up(
        downsample(warm, a), config, ranker_config, RetrieverConfig(), warm_batch, warm_epochs
    )
    ranker.freeze_dense()
    ranker.set_embedding_lr(config.online_emb_lr)
    ranker.track_offsets(config.calibration_window)
    predicted = {t: [] for t in tasks}
    observed = {t: [] for t in tasks}
    job = progress.add_task(f"{name} calibration at a = {a:g}", total=len(rest))
    for b in rest:
        pred = ranker.predict(b)
        for t in tasks:
            predicted[t].append(pred[t])
            observed[t].append(b.labels[t])
        kept = downsample(b, a)
        if len(kept):
            ranker.train_step(kept, None)
        progress.advance(job)
    out: dict[str, list[float]] = {}
    for t in tasks:
        p, y = np.concatenate(predicted[t]), np.concatenate(observed[t])
        edges = np.linspace(0, len(y), FIFTHS + 1).astype(int)
        out[t] = [
            float(p[lo:hi].mean() / y[lo:hi].mean()) if y[lo:hi].sum() else float("nan")
            for lo, hi in itertools.pairwise(edges)
        ]
    return out


def calibration_lines(result: dict[str, list[float]], a: float) -> list[str]:
    """The report's calibration table: per task, predicted / observed in each fifth."""
    head = " | ".join(f"fifth {i + 1}" for i in range(FIFTHS))
    lines = [
        f"Calibration at negative keep rate a = {a:g} (mean predicted / observed, online model):",
        "",
        f"| task | {head} |",
        "|---|" + "---|" * FIFTHS,
    ]
    for t, ratios in result.items():
        lines.append(f"| {t} | " + " | ".join(f"{r:.3f}" for r in ratios) + " |")
    return lines
