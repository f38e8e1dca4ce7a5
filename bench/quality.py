"""Model quality on real data, prequential: online ID updates vs the same model frozen; MMoE vs
shared-bottom on census-income.

    .venv/bin/python -m bench.quality [--warmup 0.3] [--warm-batch 128] [--warm-epochs 3]
        [--emb-lr 0.05] [--online-lr 0.01]

MovieLens 100K and the KuaiRand subset are replayed through the real sample joiner
(`streams.samples.build_flow`, in process, negatives all kept) into samples with point-in-time
window statistics. The first `warmup` share (event time) trains every parameter (full
training: 3 passes in batches of 128 by default - one pass in batches of 1,024 is only a dozen
Adam steps on these small sets, and the dense layers then learn nothing: click AUC 0.56); the
model is published as a snapshot and loaded twice: "frozen" is used as
is, "online" then updates its ID embeddings (dense frozen) on each batch AFTER scoring it
(prequential). Census-income (MMoE paper's pair of tasks: income > 50K, never married) trains
an MMoE and a shared-bottom core of similar size on the same split. Writes bench/out/quality.md
and bench/out/quality_auc.png.
"""

from __future__ import annotations

import gzip
import itertools
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import typer
from rich.console import Console
from rich.progress import Progress

from bench.common import DATA
from learners.config import LearnConfig, RankerConfig, RetrieverConfig
from learners.full import train_pass
from learners.inputs import Columns
from learners.mmoe import make_core
from learners.snapshots import SnapshotConfig, SnapshotReader, SnapshotWriter
from learners.training import RankerState, RetrieverState

matplotlib.use("Agg")
console = Console()
OUT = Path(__file__).resolve().parent / "out"


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged); NaN without both classes."""
    y = np.asarray(y) > 0
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = np.asarray(s)[order]
    ranks_sorted = np.arange(1, len(s) + 1, dtype=np.float64)
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    for f, c in zip(first[counts > 1], counts[counts > 1], strict=True):
        ranks_sorted[f : f + c] = ranks_sorted[f : f + c].mean()
    ranks[order] = ranks_sorted
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def join_events(events: list, partitions: int = 4, keep_rate: float = 1.0) -> Columns:
    """Run the real sample joiner in process over `events`; return the samples in ts order."""
    from bytewax.testing import TestingSink, TestingSource, run_main

    from features.samples import decode_batch
    from streams.config import SamplesConfig
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


@dataclass
class Replay:
    """Prequential predictions of both variants, per batch."""

    ts: list[int]
    labels: dict[str, list[np.ndarray]]
    preds: dict[str, dict[str, list[np.ndarray]]]
    recall: dict[str, list[float]]


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


def _recall_at(state: RetrieverState, cols: Columns, seen: dict[str, set], k: int) -> float:
    clicked = np.flatnonzero(cols.labels["click"] > 0)
    if len(clicked) == 0:
        return float("nan")
    ids, items = state.item_vectors()
    if len(ids) <= k:
        return float("nan")
    index = {n: j for j, n in enumerate(ids)}
    pos = cols.take(clicked)
    users = state.user_vectors(pos.user_id, pos.user_stats)  # (B, d)
    scores = users @ items.T  # (B, N)
    for i, u in enumerate(pos.user_id):
        done = [index[n] for n in seen.get(u, ()) if n in index and n != pos.note_id[i]]
        scores[i, done] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    hits = [index.get(n, -1) in set(row.tolist()) for n, row in zip(pos.note_id, top, strict=True)]
    return float(np.mean(hits))


def prequential(
    cols: Columns,
    tasks: tuple[str, ...],
    warmup: float,
    batch: int,
    progress: Progress,
    name: str,
    emb_lr: float,
    online_lr: float,
    warm_batch: int,
    warm_epochs: int,
) -> Replay:
    """Warm up on the first share of the samples, then score each batch before training on it.

    The warm-up is full training (every parameter), `warm_epochs` shuffled passes in batches of
    `warm_batch`; the prequential part scores and then trains on batches of `batch`.
    """
    config = LearnConfig(
        batch_size=batch, admit_after=1, seed=7, emb_lr=emb_lr, online_emb_lr=online_lr
    )
    emb = config.embedding(16)
    ranker = RankerState.create(RankerConfig(), emb, seed=7)
    retriever = RetrieverState.create(RetrieverConfig(), emb, seed=7)
    cut = int(len(cols) * warmup)
    warm = cols.take(np.arange(cut))
    for epoch in range(warm_epochs):
        update = {"batch_size": warm_batch, "seed": config.seed + epoch}
        train_pass(ranker, retriever, warm, config.model_copy(update=update))
    with tempfile.TemporaryDirectory() as tmp:
        frozen, online = _clone_via_snapshot(ranker, retriever, Path(tmp))
    for state in online:  # as `OnlineLearner` does
        state.set_embedding_lr(config.online_emb_lr)
    seen: dict[str, set] = {}
    for u, n, c in zip(warm.user_id, warm.note_id, warm.labels["click"], strict=True):
        if c:
            seen.setdefault(u, set()).add(n)
    rest = cols.take(np.arange(cut, len(cols))).batches(batch)
    out = Replay(
        [], {t: [] for t in tasks}, {"online": {}, "frozen": {}}, {"online": [], "frozen": []}
    )
    task = progress.add_task(f"{name} prequential", total=len(rest))
    for b in rest:
        out.ts.append(int(b.ts.max()))
        for t in tasks:
            out.labels[t].append(b.labels[t])
        for variant, (r, t) in (("frozen", frozen), ("online", online)):
            pred = r.predict(b)
            for k in tasks:
                out.preds[variant].setdefault(k, []).append(pred[k])
            out.recall[variant].append(_recall_at(t, b, seen, 50))
        online[0].train_step(b, None)
        online[1].train_step(b, None)
        for u, n, c in zip(b.user_id, b.note_id, b.labels["click"], strict=True):
            if c:
                seen.setdefault(u, set()).add(n)
        progress.advance(task)
    return out


def summarise(replay: Replay, tasks: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """AUC per task and mean Recall@50, per variant, over the whole prequential stream."""
    res: dict[str, dict[str, float]] = {}
    for variant in ("online", "frozen"):
        row = {}
        for t in tasks:
            row[f"AUC {t}"] = auc(
                np.concatenate(replay.labels[t]), np.concatenate(replay.preds[variant][t])
            )
        row["Recall@50"] = float(np.nanmean(replay.recall[variant]))
        res[variant] = row
    return res


def auc_over_time(replay: Replay, task: str, chunks: int = 10) -> dict[str, list[float]]:
    """AUC of `task` in `chunks` consecutive slices of the stream, per variant."""
    n = len(replay.ts)
    edges = np.linspace(0, n, chunks + 1).astype(int)
    out = {}
    for variant in ("online", "frozen"):
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


def census(seeds: int = 3, epochs: int = 3) -> dict[str, dict[str, float]]:
    """MMoE vs shared-bottom on census-income (test file, 80/20 split); median AUC over seeds."""
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
        for kind in ("mmoe", "shared_bottom"):
            torch.manual_seed(seed)
            feats = Tabular(cards, num.shape[1])
            shape = RankerConfig(
                kind=kind, experts=8, expert_hidden=(16,), tower_hidden=(8,), gate_dropout=0.1
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
            if kind == "mmoe":
                results[kind].setdefault("gate entropy", []).append(out.gate_entropy())
    return {k: {t: float(np.median(v)) for t, v in d.items()} for k, d in results.items()}


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
) -> None:
    """Run every quality benchmark; print and write the table and the AUC-over-time plot."""
    import matplotlib.pyplot as plt

    from streams.sources.kuairand import KuaiRandSource
    from streams.sources.movielens import MovieLensSource

    torch.set_num_threads(LearnConfig().threads)
    OUT.mkdir(parents=True, exist_ok=True)
    lines = ["| data set | variant | metric | value |", "|---|---|---|---|"]
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
            ("click", "like", "follow", "comment", "share"),
            "like",
        ),
    }
    with Progress(console=console) as progress:
        for ax, (name, (source, tasks, plot_task)) in zip(axes, sets.items(), strict=True):
            progress.console.print(f"{name}: joining events")
            cols = join_events(_events(source))
            progress.console.print(
                f"{name}: {len(cols):,} samples, click rate {cols.labels['click'].mean():.3f}"
            )
            replay = prequential(
                cols,
                tasks,
                warmup,
                batch,
                progress,
                name,
                emb_lr,
                online_lr,
                warm_batch,
                warm_epochs,
            )
            summary = summarise(replay, tasks)
            for metric in summary["online"]:
                on, fr = summary["online"][metric], summary["frozen"][metric]
                lines.append(f"| {name} | online | {metric} | {on:.4f} |")
                lines.append(f"| {name} | frozen | {metric} | {fr:.4f} |")
                lines.append(f"| {name} | online - frozen | {metric} | {on - fr:+.4f} |")
            curves = auc_over_time(replay, plot_task)
            for variant, values in curves.items():
                ax.plot(range(1, len(values) + 1), values, marker="o", label=variant)
            ax.set_title(f"{name}: AUC {plot_task} (prequential)")
            ax.set_xlabel("stream decile after warm-up")
            ax.set_ylabel("AUC")
            ax.legend()
    progress.console.print("census-income: MMoE vs shared-bottom")
    cen = census()
    for kind, row in cen.items():
        for metric, value in row.items():
            lines.append(f"| census-income | {kind} | {metric} | {value:.4f} |")
    fig.tight_layout()
    fig.savefig(OUT / "quality_auc.png", dpi=120)
    table = "\n".join(lines)
    (OUT / "quality.md").write_text(table + "\n")
    console.print(table)
    console.print(f"plot: {OUT / 'quality_auc.png'}")


if __name__ == "__main__":
    typer.run(main)
