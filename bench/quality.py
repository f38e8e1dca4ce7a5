"""Model quality on real data, prequential: the online and the frozen model against baselines on
the same batches; PLE, MMoE and shared-bottom on census-income.

    .venv/bin/python -m bench.quality [--warmup 0.3] [--batch 1024] [--warm-batch 128]
        [--warm-epochs 3] [--emb-lr 0.05] [--online-lr 0.01] [--half-lives 1,6,24,72,168,720]
        [--prior-k 20] [--resamples 200] [--limit N] [--id-dropout 0.3] [--ranker-history 0]
        [--retriever-history 0] [--duration-buckets 12] [--validation-tail] [--no-census]

Tuning: `--validation-tail` runs the same protocol on the warm-up alone (its first 80 % trains,
its last 20 % is scored; bench/out/quality_tail.md); settings are chosen there, never on the
full run's stream (docs/learning.md "Choices").

Data. MovieLens 100K and the KuaiRand subset are replayed through the real sample joiner
(`streams.samples.build_flow`, in process, negatives all kept) into samples with point-in-time
window statistics, in event-time order.

Protocol. The first `warmup` share of the samples is the warm-up, the rest is cut into batches
of `batch` (`stream`); every variant scores exactly these batches, each one from the warm-up and
the earlier batches only, and learns from it after scoring it (prequential).
- Models (the shipped `LearnConfig` defaults: `admit_after`, `id_dropout`): the warm-up
  trains every parameter (full training: 3 passes in batches of 128 by
  default - one pass in batches of 1,024 is only a dozen Adam steps on these small sets, and the
  dense layers then learn nothing: click AUC 0.56); the model is published as a snapshot and
  loaded twice: "frozen" is used as is, "online" updates its ID embeddings (dense frozen) on
  each batch after scoring it.
- Ranking baselines (`bench.baselines`), from past samples: popularity (the note's past clicks),
  recent popularity (past clicks with exponential decay), the note's smoothed rate per task
  ((past positives + prior k) / (past impressions + k), prior = the global past rate), and a
  logistic regression per task on the user's and the note's smoothed 30-day rates of every task
  (log-odds of the window counts in the sample, the ranker's inputs), fit once on the warm-up.
- Retrieval baselines: ItemCF (cosine similarity of the notes' past clicker sets, summed over
  the notes the user clicked before), popularity and recent popularity.
- Calibration (`bench.calibration`): the ranker trained as above but on down-sampled data
  (negatives kept at `--keep-rate`, the joiner's 0.25) scores every batch whole; mean predicted /
  observed rate of click, like and completion in each fifth of the stream.
- The half-life of recent popularity is chosen among `--half-lives` on the warm-up alone: its
  last 20 % is replayed the same way from the state of its first 80 %; the best mean AUC over
  the tasks picks the ranking half-life, the best Recall@50 the retrieval one.

Metrics. AUC per task over every scored sample. GAUC per task: the AUC of each user over the
user's samples of the whole scored stream, weighted by their number, users with one class
skipped (the features stay point-in-time per sample: a user's own window counts move along the
stream). Recall@50 over the clicked samples: is the note among the variant's top 50 of the notes
it knows, the other notes the user clicked before excluded. Intervals: 95 % percentile bootstrap
over users (resampled with replacement) of online - best baseline (highest on the stream) and
online - frozen. Census-income (MMoE paper's pair of tasks: income > 50K, never married) trains
PLE (2 levels, and CGC: 1 level), MMoE and shared-bottom cores of similar size on the same split.
Writes bench/out/quality.md and bench/out/quality_auc.png.
"""

from __future__ import annotations

import gzip
import itertools
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib
import numpy as np
import torch
import typer
from rich.console import Console
from rich.progress import Progress

from bench.baselines import (
    HOUR_MS,
    ItemCF,
    Popularity,
    RankedScores,
    RecentPopularity,
    ShorterFirst,
    SmoothedRate,
    WindowRateLR,
    add_clicks,
    auc,
    bootstrap,
    choose_half_life,
    gauc,
    recall_hits,
)
from bench.calibration import calibration, calibration_lines, warm_up
from bench.common import DATA
from learners.config import LearnConfig, RankerConfig, RetrieverConfig
from learners.inputs import Columns
from learners.mmoe import make_core
from learners.snapshots import SnapshotConfig, SnapshotReader, SnapshotWriter
from learners.training import RankerState, RetrieverState
from streams.config import SamplesConfig

matplotlib.use("Agg")
console = Console()
OUT = Path(__file__).resolve().parent / "out"


def join_events(events: list, partitions: int = 4, keep_rate: float = 1.0) -> Columns:
    """Run the real sample joiner in process over `events`; return the samples in ts order."""
    from bytewax.testing import TestingSink, TestingSource, run_main

    from features.samples import decode_batch
    from streams.samples import build_flow
    from tests.streams.helpers import raw_batches

    batches = raw_batches(events, partitions, 2_000, topic="interactions")
    messages: list = []
    config = SamplesConfig(negative_keep_rate=keep_rate, batch_size=2_000, shards=4)
    flow = build_flow(
        TestingSource(batches),
        TestingSink(messages),
        TestingSink([]),
        TestingSink([]),
        TestingSink([]),
        config,
        range(partitions),
        recoverable=False,
    )
    run_main(flow)
    samples = [s for m in messages for s in decode_batch(m.value).samples]
    samples.sort(key=lambda s: (s.ts, s.sample_id))
    return Columns.from_samples(samples)


def _events(source) -> list:
    return [e for batch in source.batches() for e in batch]


MODELS = ("online", "frozen")
RANKING_BASELINES = ("popularity", "recent popularity", "smoothed rate", "LR", "shorter first")
"""("shorter first" only where impressions carry durations.)"""
RETRIEVAL_BASELINES = ("popularity", "recent popularity", "ItemCF")
VARIANTS = (*MODELS, *RANKING_BASELINES, "ItemCF")
K = 50
CALIBRATION_TASKS = ("click", "like", "completion")
"""Tasks whose calibration under down-sampling is checked (where the stream has both labels)."""


@dataclass
class Replay:
    """Per prequential batch: labels and users, and every variant's scores and retrieval hits."""

    ts: list[int]
    users: list[list[str]]
    labels: dict[str, list[np.ndarray]]
    preds: dict[str, dict[str, list[np.ndarray]]]
    """variant -> task -> scores per batch."""
    hit_users: list[list[str]]
    """Users of the clicked samples, per batch."""
    hits: dict[str, list[np.ndarray]]
    """variant -> per batch, 1/0 per clicked sample: its note is in the top `K` (NaN: at most
    `K` candidates)."""


def stream(
    cols: Columns, tasks: tuple[str, ...], warmup: float, batch: int
) -> tuple[Columns, list[Columns], Replay]:
    """The warm-up (first `warmup` share), the scored batches after it and their empty replay."""
    cut = int(len(cols) * warmup)
    warm = cols.take(np.arange(cut))
    rest = cols.take(np.arange(cut, len(cols))).batches(batch)
    replay = Replay(
        ts=[int(b.ts.max()) for b in rest],
        users=[b.user_id for b in rest],
        labels={t: [b.labels[t] for b in rest] for t in tasks},
        preds={v: {} for v in VARIANTS},
        hit_users=[[b.user_id[i] for i in np.flatnonzero(b.labels["click"] > 0)] for b in rest],
        hits={v: [] for v in VARIANTS},
    )
    return warm, rest, replay


def _clone_via_snapshot(
    ranker: RankerState, retriever: RetrieverState, root: Path
) -> tuple[tuple[RankerState, RetrieverState], tuple[RankerState, RetrieverState]]:
    """Publish both models and load them twice (frozen copy, online copy)."""
    cfg = SnapshotConfig(root=root)
    for name, state in (("ranker", ranker), ("retriever", retriever)):
        tables, dense = state.full_state()
        SnapshotWriter(root, name, cfg).publish_full(tables, dense, state.hwm_ms, state.meta())
    snaps = {n: SnapshotReader(root, n).latest() for n in ("ranker", "retriever")}
    pairs = []
    for _ in range(2):
        r = RankerState.from_snapshot(snaps["ranker"])
        t = RetrieverState.from_snapshot(snaps["retriever"])
        r.freeze_dense()
        t.freeze_dense()
        pairs.append((r, t))
    return pairs[0], pairs[1]


def _recall_at(state: RetrieverState, cols: Columns, seen: dict[str, set], k: int) -> np.ndarray:
    """Per clicked sample: 1 if its note is in the model's top `k`, else 0.

    The other notes the user clicked before are excluded; NaN when the model knows no more than
    `k` notes.
    """
    clicked = np.flatnonzero(cols.labels["click"] > 0)
    if len(clicked) == 0:
        return np.zeros(0)
    ids, items = state.item_vectors()
    if len(ids) <= k:
        return np.full(len(clicked), np.nan)
    index = {n: j for j, n in enumerate(ids)}
    pos = cols.take(clicked)
    users = state.user_vectors(pos.user_id, pos.user_stats)  # (B, d)
    scores = users @ items.T  # (B, N)
    for i, u in enumerate(pos.user_id):
        done = [index[n] for n in seen.get(u, ()) if n in index and n != pos.note_id[i]]
        scores[i, done] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    hits = [index.get(n, -1) in set(row.tolist()) for n, row in zip(pos.note_id, top, strict=True)]
    return np.array(hits, dtype=np.float64)


def prequential(
    warm: Columns,
    rest: list[Columns],
    replay: Replay,
    config: LearnConfig,
    progress: Progress,
    name: str,
    warm_batch: int,
    warm_epochs: int,
    ranker_config: RankerConfig,
    retriever_config: RetrieverConfig,
) -> None:
    """Train on the warm-up, then score each batch of `rest` before training on it (models).

    The warm-up is full training (every parameter), `warm_epochs` shuffled passes in batches of
    `warm_batch` (`bench.calibration.warm_up`); the prequential part scores and then trains on
    the batches of `rest`. Fills the "online" and "frozen" entries of `replay`.
    """
    tasks = tuple(replay.labels)
    ranker, retriever = warm_up(
        warm, config, ranker_config, retriever_config, warm_batch, warm_epochs
    )
    with tempfile.TemporaryDirectory() as tmp:
        frozen, online = _clone_via_snapshot(ranker, retriever, Path(tmp))
    for state in online:  # as `OnlineLearner` does
        state.set_embedding_lr(config.online_emb_lr)
    online[0].track_offsets(config.calibration_window)
    seen: dict[str, set] = {}
    add_clicks(seen, warm)
    task = progress.add_task(f"{name} prequential (models)", total=len(rest))
    for b in rest:
        for variant, (r, t) in (("frozen", frozen), ("online", online)):
            pred = r.predict(b)
            for k in tasks:
                replay.preds[variant].setdefault(k, []).append(pred[k])
            replay.hits[variant].append(_recall_at(t, b, seen, K))
        online[0].train_step(b, None)
        online[1].train_step(b, None)
        add_clicks(seen, b)
        progress.advance(task)


def run_baselines(
    warm: Columns,
    rest: list[Columns],
    replay: Replay,
    batch: int,
    progress: Progress,
    name: str,
    half_lives: list[float],
    prior_k: float,
) -> str:
    """Score each batch of `rest` with every baseline, then add the batch to their state.

    Baselines read the warm-up and earlier batches only; the half-lives of recent popularity are
    chosen on the warm-up's tail. Fills the baselines' entries of `replay`; returns the choice,
    as a sentence.
    """
    tasks = tuple(replay.labels)
    ranking, retrieval = choose_half_life(warm, tasks, batch, half_lives, K)
    rank_h = max(ranking, key=ranking.__getitem__)
    retr_h = max(retrieval, key=retrieval.__getitem__)
    choice = (
        f"recent popularity half-life chosen on the warm-up's last 20 %: {rank_h:g} h for ranking "
        f"(tail mean AUC {', '.join(f'{h:g} h {v:.4f}' for h, v in ranking.items())}), "
        f"{retr_h:g} h for retrieval (tail Recall@{K} "
        f"{', '.join(f'{h:g} h {v:.4f}' for h, v in retrieval.items())})"
    )
    progress.console.print(f"{name}: {choice}")
    lr = WindowRateLR(tasks)
    lr.fit(warm)
    popularity = Popularity(tasks)
    rankers = {
        "popularity": popularity,
        "recent popularity": RecentPopularity(tasks, rank_h * HOUR_MS),
        "smoothed rate": SmoothedRate(tasks, prior_k),
    }
    retrievers = {
        "popularity": popularity,
        "recent popularity": RecentPopularity(tasks, retr_h * HOUR_MS),
        "ItemCF": ItemCF(),
    }
    learning = [*rankers.values(), retrievers["recent popularity"], retrievers["ItemCF"]]
    if (warm.item_duration_ms > 0).any():  # impressions carry durations: "shorter first" too
        rankers["shorter first"] = ShorterFirst(tasks)  # learns nothing from past batches
    seen: dict[str, set] = {}
    for model in learning:
        model.update(warm)
    add_clicks(seen, warm)
    task = progress.add_task(f"{name} prequential (baselines)", total=len(rest))
    for b in rest:
        for variant, model in (*rankers.items(), ("LR", lr)):
            for t, p in model.predict(b).items():
                replay.preds[variant].setdefault(t, []).append(p)
        for variant, model in retrievers.items():
            replay.hits[variant].append(
                recall_hits(model.user_item_scores, model.notes, b, seen, K)
            )
        for model in learning:
            model.update(b)
        add_clicks(seen, b)
        progress.advance(task)
    return choice


def summarise(replay: Replay) -> dict[str, dict[str, float]]:
    """AUC and GAUC (per user) per task and Recall@50 (over clicked samples), per variant."""
    users = np.concatenate(replay.users)
    res: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        row = {}
        for t, labels in replay.labels.items():
            if t in replay.preds[variant]:
                y, s = np.concatenate(labels), np.concatenate(replay.preds[variant][t])
                row[f"AUC {t}"] = auc(y, s)
                row[f"GAUC {t}"] = gauc(y, s, users)
        if replay.hits[variant]:
            row[f"Recall@{K}"] = float(np.nanmean(np.concatenate(replay.hits[variant])))
        res[variant] = row
    return res


def _interval(point: float, lo: float, hi: float) -> str:
    return f"{point:+.4f} (95 % CI by user {lo:+.4f} .. {hi:+.4f})"


def compare(replay: Replay, summary: dict[str, dict[str, float]], resamples: int) -> list[str]:
    """Per task and for Recall@50: the best baseline, online - best and online - frozen.

    The differences come with percentile intervals of a bootstrap over users.
    """
    users = np.concatenate(replay.users)
    lines = []
    for t, labels in replay.labels.items():
        metric = f"AUC {t}"
        scored = [v for v in RANKING_BASELINES if metric in summary[v]]
        best = max(scored, key=lambda v: np.nan_to_num(summary[v][metric], nan=-1))
        y = np.concatenate(labels)
        online = RankedScores(y, np.concatenate(replay.preds["online"][t]))
        parts = [f"{metric}: best baseline {best} ({summary[best][metric]:.4f})"]
        for other in (best, "frozen"):
            ranked = RankedScores(y, np.concatenate(replay.preds[other][t]))
            diff = bootstrap(users, lambda w, a=online, b=ranked: a.auc(w) - b.auc(w), resamples)
            parts.append(f"online - {other} {_interval(*diff)}")
        lines.append("; ".join(parts))
    metric = f"Recall@{K}"
    best = max(RETRIEVAL_BASELINES, key=lambda v: np.nan_to_num(summary[v][metric], nan=-1))
    hit_users = np.array([u for us in replay.hit_users for u in us])
    hits = {v: np.concatenate(replay.hits[v]) for v in ("online", "frozen", best)}
    parts = [f"{metric}: best baseline {best} ({summary[best][metric]:.4f})"]
    for other in (best, "frozen"):
        both = np.isfinite(hits["online"]) & np.isfinite(hits[other])
        delta = (hits["online"] - hits[other])[both]
        diff = bootstrap(
            hit_users[both], lambda w, d=delta: float((w * d).sum() / w.sum()), resamples
        )
        parts.append(f"online - {other} {_interval(*diff)}")
    lines.append("; ".join(parts))
    return lines


def table(summary: dict[str, dict[str, float]]) -> list[str]:
    """Markdown table: one row per variant, one column per metric ("-" where undefined)."""
    metrics = list(dict.fromkeys(m for row in summary.values() for m in row))
    metrics.sort(key=lambda m: (m.startswith("Recall"), m.startswith("GAUC")))
    lines = ["| variant | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for variant, row in summary.items():
        cells = [f"{row[m]:.4f}" if m in row and np.isfinite(row[m]) else "-" for m in metrics]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return lines


def auc_over_time(replay: Replay, task: str, chunks: int = 10) -> dict[str, list[float]]:
    """AUC of `task` in `chunks` consecutive slices of the stream, per ranking variant."""
    n = len(replay.ts)
    edges = np.linspace(0, n, chunks + 1).astype(int)
    out = {}
    for variant in (v for v in (*MODELS, *RANKING_BASELINES) if task in replay.preds[v]):
        out[variant] = [
            auc(
                np.concatenate(replay.labels[task][lo:hi]),
                np.concatenate(replay.preds[variant][task][lo:hi]),
            )
            for lo, hi in itertools.pairwise(edges)
            if hi > lo
        ]
    return out


CENSUS_NUMERIC = (0, 5, 16, 17, 18, 30, 39)
CENSUS_DROP = (24, 41, 7)  # instance weight, income label, marital-status label


class Tabular(torch.nn.Module):
    """Embeddings of categorical columns + numeric columns, concatenated."""

    def __init__(self, cards: list[int], numeric: int, dim: int = 4) -> None:
        super().__init__()
        self.embs = torch.nn.ModuleList(torch.nn.Embedding(c, dim) for c in cards)
        self.out_dim = len(cards) * dim + numeric

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """(B, C) codes, (B, N) numbers -> (B, out_dim)."""
        return torch.cat([e(cat[:, i]) for i, e in enumerate(self.embs)] + [num], dim=1)


CENSUS_CORES = {
    "ple": dict(kind="ple", shared_experts=4, task_experts=2, levels=2),
    "cgc": dict(kind="ple", shared_experts=4, task_experts=2, levels=1),
    "mmoe": dict(kind="mmoe"),
    "shared_bottom": dict(kind="shared_bottom"),
}
"""Census cores: 8 experts of width 16 for MMoE, 4 shared + 2 per task x 2 tasks of width 16 per
PLE level (CGC: PLE with one level), a 128-wide bottom for shared-bottom (`make_core`)."""


def census(seeds: int = 3, epochs: int = 3) -> dict[str, dict[str, float]]:
    """`CENSUS_CORES` on census-income (test file, 80/20 split); median AUC over seeds."""
    path = DATA / "census-income-kdd" / "census-income.test.gz"
    with gzip.open(path, "rt") as f:
        rows = [[c.strip() for c in line.rstrip(".\n").split(",")] for line in f if line.strip()]
    columns = list(zip(*rows, strict=True))
    income = np.array([c.startswith("50000+") for c in columns[41]], dtype=np.float32)
    single = np.array([c == "Never married" for c in columns[7]], dtype=np.float32)
    num = np.stack([np.log1p(np.array(columns[i], dtype=np.float64)) for i in CENSUS_NUMERIC], 1)
    num = ((num - num.mean(0)) / (num.std(0) + 1e-9)).astype(np.float32)
    cat_idx = [i for i in range(len(columns)) if i not in CENSUS_NUMERIC and i not in CENSUS_DROP]
    codes, cards = [], []
    for i in cat_idx:
        values, inv = np.unique(np.array(columns[i]), return_inverse=True)
        codes.append(inv)
        cards.append(len(values))
    cat = torch.from_numpy(np.stack(codes, 1).astype(np.int64))
    numt = torch.from_numpy(num)
    labels = {"income": torch.from_numpy(income), "never_married": torch.from_numpy(single)}
    results: dict[str, dict[str, list[float]]] = {}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(income))
        split = int(0.8 * len(order))
        train, test = torch.from_numpy(order[:split]), torch.from_numpy(order[split:])
        for kind, core_shape in CENSUS_CORES.items():
            torch.manual_seed(seed)
            feats = Tabular(cards, num.shape[1])
            shape = RankerConfig(
                **core_shape, experts=8, expert_hidden=(16,), tower_hidden=(8,), gate_dropout=0.1
            )
            core = make_core(shape, feats.out_dim, tuple(labels))
            model = torch.nn.ModuleDict({"f": feats, "c": core})
            opt = torch.optim.Adam(model.parameters(), lr=3e-3)
            for _ in range(epochs):
                perm = train[torch.randperm(len(train))]
                for lo in range(0, len(perm), 512):
                    idx = perm[lo : lo + 512]
                    out = core(feats(cat[idx], numt[idx]))
                    loss = sum(
                        torch.nn.functional.binary_cross_entropy_with_logits(out.logits[t], y[idx])
                        for t, y in labels.items()
                    )
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            model.eval()
            with torch.no_grad():
                out = core(feats(cat[test], numt[test]))
            for t, y in labels.items():
                score = auc(y[test].numpy(), out.logits[t].numpy())
                results.setdefault(kind, {}).setdefault(t, []).append(score)
            if out.gates:
                h = out.gate_entropy()
                results[kind].setdefault("gate entropy", []).append(h)
                n = out.gates[0].shape[1]
                results[kind].setdefault("gate entropy / log n", []).append(h / np.log(n))
            params = sum(p.numel() for p in core.parameters())
            results[kind].setdefault("core parameters", []).append(params)
    return {k: {t: float(np.median(v)) for t, v in d.items()} for k, d in results.items()}


def census_table(rows: dict[str, dict[str, float]]) -> list[str]:
    """Markdown table of `census` results, the cores side by side."""
    metrics = list(dict.fromkeys(m for row in rows.values() for m in row))
    lines = ["| metric | " + " | ".join(rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for m in metrics:
        cells = [
            "-" if m not in r else f"{r[m]:.0f}" if m == "core parameters" else f"{r[m]:.4f}"
            for r in rows.values()
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


@dataclass(frozen=True)
class Settings:
    """Knobs of one prequential run (the CLI options)."""

    warmup: float
    batch: int
    emb_lr: float
    online_lr: float
    warm_batch: int
    warm_epochs: int
    half_lives: list[float]
    prior_k: float
    resamples: int
    keep_rate: float
    id_dropout: float
    calibration_window: int
    ranker: RankerConfig
    retriever: RetrieverConfig


def evaluate(
    name: str, cols: Columns, tasks: tuple[str, ...], settings: Settings, progress: Progress
) -> tuple[list[str], Replay]:
    """Models and baselines on the same prequential batches of `cols`; the report's section."""
    s = settings
    warm, rest, replay = stream(cols, tasks, s.warmup, s.batch)
    config = LearnConfig(
        batch_size=s.batch,
        seed=7,
        emb_lr=s.emb_lr,
        online_emb_lr=s.online_lr,
        id_dropout=s.id_dropout,
        calibration_window=s.calibration_window,
    )
    prequential(
        warm, rest, replay, config, progress, name, s.warm_batch, s.warm_epochs, s.ranker,
        s.retriever,
    )  # fmt: skip
    choice = run_baselines(warm, rest, replay, s.batch, progress, name, s.half_lives, s.prior_k)
    summary = summarise(replay)
    calibrated = tuple(t for t in CALIBRATION_TASKS if t in tasks and 0 < cols.labels[t].mean() < 1)
    ratios = calibration(
        warm, rest, calibrated, s.keep_rate, config, s.ranker, s.warm_batch, s.warm_epochs,
        progress, name,
    )  # fmt: skip
    lines = [
        f"## {name}",
        "",
        f"{len(cols):,} samples (click rate {cols.labels['click'].mean():.3f}); warm-up "
        f"{len(warm):,}, then {len(rest)} prequential batches of {s.batch:,}; {choice}.",
        "",
        *table(summary),
        "",
        *(f"- {line}" for line in compare(replay, summary, s.resamples)),
        "",
        *calibration_lines(ratios, s.keep_rate),
        "",
    ]
    return lines, replay


def main(
    warmup: float = typer.Option(0.3, help="Share of each stream used for full training."),
    batch: int = typer.Option(1024, help="Samples per prequential batch."),
    limit: int | None = typer.Option(None, help="Cap on source rows (quick runs)."),
    emb_lr: float = typer.Option(
        LearnConfig().emb_lr, help="Adagrad learning rate of the ID rows in full training."
    ),
    online_lr: float = typer.Option(
        LearnConfig().online_emb_lr, help="Adagrad learning rate of the ID rows online."
    ),
    warm_batch: int = typer.Option(128, help="Batch size of the warm-up's full training."),
    warm_epochs: int = typer.Option(3, help="Passes of the warm-up's full training."),
    half_lives: str = typer.Option(
        "1,6,24,72,168,720",
        help="Candidate half-lives (hours, comma-separated) of recent popularity, chosen on the "
        "warm-up's tail.",
    ),
    prior_k: float = typer.Option(20.0, help="Pseudo-impressions of the smoothed-rate baseline."),
    resamples: int = typer.Option(200, help="Bootstrap resamples of users for the intervals."),
    keep_rate: float = typer.Option(
        SamplesConfig().negative_keep_rate,
        help="Negative keep rate of the calibration check (the joiner's default).",
    ),
    id_dropout: float = typer.Option(LearnConfig().id_dropout, help="ID dropout of full training."),
    calibration_window: int = typer.Option(
        LearnConfig().calibration_window,
        help="Online: samples the logit offsets are refit on (0: full training's offsets).",
    ),
    ranker_history: int = typer.Option(
        RankerConfig().history, help="History length the ranker attends to (0: off)."
    ),
    retriever_history: int = typer.Option(
        RetrieverConfig().history, help="History length the user tower pools (0: off)."
    ),
    duration_buckets: int = typer.Option(
        RankerConfig().duration_buckets, help="Duration buckets of the ranker (0: off)."
    ),
    validation_tail: bool = typer.Option(
        False,
        help="Tuning mode: only the warm-up of each stream; its first 80 % trains, its last 20 % "
        "is scored (choose settings here, never on the full run's stream).",
    ),
    with_census: bool = typer.Option(True, "--census/--no-census", help="Run census-income."),
) -> None:
    """Run every quality benchmark; print and write the tables and the AUC-over-time plot."""
    import matplotlib.pyplot as plt

    from streams.sources.kuairand import KuaiRandSource
    from streams.sources.movielens import MovieLensSource

    torch.set_num_threads(LearnConfig().threads)
    OUT.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        warmup,
        batch,
        emb_lr,
        online_lr,
        warm_batch,
        warm_epochs,
        [float(h) for h in half_lives.split(",")],
        prior_k,
        resamples,
        keep_rate,
        id_dropout,
        calibration_window,
        RankerConfig(history=ranker_history, duration_buckets=duration_buckets),
        RetrieverConfig(history=retriever_history),
    )
    if validation_tail:
        settings = replace(settings, warmup=0.8)
    lines = [
        "# Model quality (bench.quality)",
        "",
        "Prequential: each batch is scored by every variant from the warm-up and earlier batches "
        "only, then added to the online model and the baselines. AUC pools every scored sample; "
        "GAUC is the AUC per user over the user's samples of the whole scored stream, weighted "
        "by the user's samples (single-class users skipped) - the features (window counts) stay "
        f"point-in-time per sample. Recall@{K} pools the clicked samples. Intervals: 95 % "
        f"percentile bootstrap over users ({resamples} resamples).",
        "",
    ]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    sets = {
        "MovieLens-100K": (
            MovieLensSource(DATA / "movielens-100k" / "u.data", limit=limit),
            ("like",),
            "like",
        ),
        "KuaiRand subset": (
            KuaiRandSource(
                DATA / "kuairand-27k-likehate" / "processed_standard_kcore_15.tsv", limit=limit
            ),
            ("click", "like", "completion", "follow", "comment", "share"),
            "like",
        ),
    }
    with Progress(console=console) as progress:
        for ax, (name, (source, tasks, plot_task)) in zip(axes, sets.items(), strict=True):
            progress.console.print(f"{name}: joining events")
            cols = join_events(_events(source))
            if validation_tail:  # the warm-up only: what the full run trains on
                cols = cols.take(np.arange(int(len(cols) * warmup)))
            section, replay = evaluate(name, cols, tasks, settings, progress)
            lines += section
            curves = auc_over_time(replay, plot_task)
            for variant, values in curves.items():
                ax.plot(range(1, len(values) + 1), values, marker="o", label=variant)
            ax.set_title(f"{name}: AUC {plot_task} (prequential)")
            ax.set_xlabel("stream decile after warm-up")
            ax.set_ylabel("AUC")
            ax.legend()
    if with_census:
        progress.console.print("census-income: PLE, CGC, MMoE and shared-bottom")
        lines += ["## census-income", "", *census_table(census())]
    fig.tight_layout()
    fig.savefig(OUT / "quality_auc.png", dpi=120)
    report = "\n".join(lines)
    name = "quality_tail.md" if validation_tail else "quality.md"
    (OUT / name).write_text(report + "\n")
    console.print(report, markup=False, highlight=False, soft_wrap=True)
    console.print(f"plot: {OUT / 'quality_auc.png'}")


if __name__ == "__main__":
    typer.run(main)
