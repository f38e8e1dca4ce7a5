"""Pre-ranking and re-ranking on real data, prequential: what the funnel's two stages keep and cost.

    .venv/bin/python -m bench.prerank [--warmup 0.3] [--batch 1024] [--candidates 2000]
        [--keep 200] [--users 30] [--distill 0,1] [--diversity 0,0.3,0.6,0.9] [--limit N]
        [--only movielens|kuairand]

Data and protocol as `bench.quality` (MovieLens-100K and the KuaiRand subset through the real
sample joiner; warm-up = first 30 %, full training 3 passes in batches of 128; then batches of
1,024, each scored before the models learn from it, ID rows only, as the online learner does).
The pre-rankers (`learners.preranker`, one per `--distill` weight: 0 = labels only) train on the
warm-up after the ranker, in the same number of passes, and online on every batch like the
ranker (distilled ones against the online ranker's predictions).

Requests. In each scored batch, up to `--users` users with a click in it (seeded draw) make a
request: the retriever's `--candidates` notes of highest cosine among the notes it knows, minus
those the user was shown before (the exposure filter). Each candidate carries its latest window
counts seen in earlier samples (what the feature store would hold) and the retriever's side
info. On them:
- keep@50/200: the share of the ranker's top 50 (fused score, `serving.recommender.fuse`, the
  shipped weights) that the pre-ranker's top `--keep` (fused the same way) contains; peer: the
  retriever's own top `--keep` (today's cut: the merged channels' order).
- NDCG@20 of the funnel (pre-rank to `--keep`, rank, fuse) vs ranker-only (rank every
  candidate): relevance = the notes the user clicks in the batch (binary; ideal DCG over all of
  them, retrieved or not).
- re-ranking (`serving.rerank`, the shipped `RerankConfig` at each `--diversity`; 0 = the
  window rules alone): the funnel's top 20 vs the re-ranked 20 chosen from its best `pool`:
  intra-list diversity (mean pairwise 1 - cosine of the retriever's item vectors), distinct
  categories (MovieLens: genre; KuaiRand has none) and NDCG@20.
Scoring time per request of ranker (all candidates) and pre-ranker (item tower cached) is
printed too (noisy on the shared machine: compare the ratio).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import typer
from rich.console import Console
from rich.progress import Progress

from bench.calibration import warm_up
from bench.quality import _events, join_events
from learners.config import LearnConfig, RankerConfig, RetrieverConfig
from learners.full import prerank_pass
from learners.inference import Ranker
from learners.inputs import Columns
from learners.preranker import PreRankerConfig
from learners.snapshots import SnapshotConfig, SnapshotReader, SnapshotWriter
from learners.training import PreRankerState, RankerState, RetrieverState
from serving.config import FusionConfig, RerankConfig
from serving.recommender import fuse
from serving.rerank import category_coverage, intra_list_diversity, rerank

console = Console()
TOP = 50
"""The ranker's top the pre-ranker must keep."""
NDCG_AT = 20


def ndcg(ranked: list[str], relevant: set[str], k: int = NDCG_AT) -> float:
    """Binary NDCG@k of `ranked` with the ideal DCG over all `relevant` (NaN if none)."""
    if not relevant:
        return float("nan")
    gains = [1.0 / np.log2(i + 2) for i, n in enumerate(ranked[:k]) if n in relevant]
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(k, len(relevant))))
    return float(sum(gains) / ideal)


@dataclass
class Known:
    """What the serving stores would hold before a batch: latest counts, exposures."""

    note_stats: dict[str, np.ndarray] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    shown: dict[str, set[str]] = field(default_factory=dict)

    def add(self, b: Columns) -> None:
        """Take in a batch after it was scored."""
        for j, (u, n) in enumerate(zip(b.user_id, b.note_id, strict=True)):
            self.note_stats[n] = b.note_stats[j]
            self.durations[n] = float(b.item_duration_ms[j])
            self.shown.setdefault(u, set()).add(n)


@dataclass
class Request:
    """One user's request in a batch: the candidates and every stage's scores."""

    user: str
    candidates: list[str]
    relevant: set[str]
    ranker: np.ndarray
    """(C,) fused ranker scores."""
    prerank: dict[str, np.ndarray]
    """Variant -> (C,) fused pre-ranker scores."""
    rank_ms: float
    prerank_ms: dict[str, float]


def candidate_columns(
    user: str, b: Columns, notes: list[str], retriever: RetrieverState, known: Known
) -> Columns:
    """The rows the ranker and the pre-ranker score for `user`'s request in batch `b`."""
    first = b.user_id.index(user)
    authors = [retriever.side.get(n, ("", ""))[0] for n in notes]
    cats = [retriever.side.get(n, ("", ""))[1] for n in notes]
    zero = np.zeros(len(b.note_stats[0]), np.float32)
    stats = np.stack([known.note_stats.get(n, zero) for n in notes])
    durations = np.array([known.durations.get(n, 0.0) for n in notes], np.float32)
    return Ranker.columns(
        user, notes, authors, cats, b.user_stats[first], stats, durations=durations,
        history=b.history[first],
    )  # fmt: skip


def requests_of(
    b: Columns,
    ranker: RankerState,
    retriever: RetrieverState,
    prerankers: dict[str, PreRankerState],
    known: Known,
    fusion: FusionConfig,
    candidates: int,
    users: int,
    rng: np.random.Generator,
) -> list[Request]:
    """The requests of batch `b` (up to `users` users with a click), scored by every stage."""
    clicked = [u for u, c in zip(b.user_id, b.labels["click"], strict=True) if c > 0]
    pool = sorted(set(clicked))
    pick = rng.choice(len(pool), min(users, len(pool)), replace=False) if pool else []
    ids, items = retriever.item_vectors()
    index = {n: j for j, n in enumerate(ids)}
    out = []
    for i in sorted(int(p) for p in pick):
        user = pool[i]
        first = b.user_id.index(user)
        query = retriever.user_vectors([user], b.user_stats[first : first + 1], [b.history[first]])
        sims = items @ query[0]  # (N,)
        shown = [index[n] for n in known.shown.get(user, ()) if n in index]
        sims[shown] = -np.inf
        k = min(candidates, int(np.isfinite(sims).sum()))
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]  # retriever order
        notes = [ids[j] for j in top.tolist()]
        cols = candidate_columns(user, b, notes, retriever, known)
        t0 = time.perf_counter()
        ranked = fuse(ranker.predict(cols), fusion)
        rank_ms = (time.perf_counter() - t0) * 1000
        pre, pre_ms = {}, {}
        for name, model in prerankers.items():
            t0 = time.perf_counter()
            pre[name] = fuse(model.predict(cols), fusion)
            pre_ms[name] = (time.perf_counter() - t0) * 1000
        relevant = {n for u, n, c in zip(b.user_id, b.note_id, b.labels["click"], strict=True)
                    if u == user and c > 0}  # fmt: skip
        out.append(Request(user, notes, relevant, ranked, pre, rank_ms, pre_ms))
    return out


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` highest scores, best first."""
    return np.argsort(-scores, kind="stable")[:k]


@dataclass
class Summary:
    """Per-request figures of one data set, by name."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        """Record one request's value of `name`."""
        self.values.setdefault(name, []).append(value)

    def mean(self, name: str) -> float:
        """Mean over the requests (NaN values skipped)."""
        return float(np.nanmean(self.values[name])) if name in self.values else float("nan")

    def median(self, name: str) -> float:
        """Median over the requests."""
        return float(np.nanmedian(self.values[name])) if name in self.values else float("nan")


def measure(
    req: Request,
    keep: int,
    retriever: RetrieverState,
    rerank_configs: tuple[RerankConfig, ...],
    summary: Summary,
) -> None:
    """Add one request's keep rates, NDCGs and re-ranking figures to `summary`."""
    c = len(req.candidates)
    best = set(top(req.ranker, TOP).tolist())
    summary.add("keep retriever", len(best & set(range(min(keep, c)))) / len(best))
    summary.add(
        "ndcg ranker-only",
        ndcg([req.candidates[j] for j in top(req.ranker, NDCG_AT)], req.relevant),
    )
    summary.add("rank ms", req.rank_ms)
    funnel_order = None
    for name, scores in req.prerank.items():
        kept = top(scores, keep)
        summary.add(f"keep {name}", len(best & set(kept.tolist())) / len(best))
        order = kept[np.argsort(-req.ranker[kept], kind="stable")]  # the ranker on the kept
        summary.add(f"ndcg funnel {name}", ndcg([req.candidates[j] for j in order], req.relevant))
        summary.add(f"prerank ms {name}", req.prerank_ms[name])
        if funnel_order is None:
            funnel_order = order
    assert funnel_order is not None
    pool = funnel_order[: max(r.pool for r in rerank_configs)]
    notes = [req.candidates[j] for j in pool.tolist()]
    found, vecs = retriever.item_vectors(notes)
    row = {n: v for n, v in zip(found, vecs, strict=True)}
    dim = retriever.config.out_dim
    v = np.stack([row.get(n, np.zeros(dim, np.float32)) for n in notes])
    cats = [retriever.side.get(n, ("", ""))[1] for n in notes]
    authors = [retriever.side.get(n, ("", ""))[0] for n in notes]
    lists = [("fused", np.arange(min(NDCG_AT, len(pool))))]
    for config in rerank_configs:
        t0 = time.perf_counter()
        k = config.pool
        lists.append(
            (
                rerank_label(config),
                rerank(req.ranker[pool[:k]], v[:k], cats[:k], authors[:k], NDCG_AT, config).order,
            )
        )
        summary.add("rerank ms", (time.perf_counter() - t0) * 1000)
    for label, idx in lists:
        summary.add(f"ild {label}", intra_list_diversity(v[idx]))
        summary.add(f"categories {label}", category_coverage([cats[j] for j in idx.tolist()]))
        summary.add(f"ndcg {label}", ndcg([notes[j] for j in idx.tolist()], req.relevant))


@dataclass(frozen=True)
class Settings:
    """Knobs of one run (the CLI options)."""

    warmup: float = 0.3
    batch: int = 1024
    warm_batch: int = 128
    warm_epochs: int = 3
    candidates: int = 2000
    keep: int = 200
    users: int = 30
    distill: tuple[float, ...] = (0.0, 1.0)
    rerank: tuple[RerankConfig, ...] = (RerankConfig(),)
    fusion: FusionConfig = field(default_factory=FusionConfig)


def _published_copy(states: dict[str, object], root: Path) -> dict[str, object]:
    """Publish every model as a full snapshot and load it back (as the online learner starts)."""
    cfg = SnapshotConfig(root=root)
    out = {}
    for name, state in states.items():
        tables, dense = state.full_state()
        SnapshotWriter(root, name, cfg).publish_full(tables, dense, state.hwm_ms, state.meta())
        loaded = type(state).from_snapshot(SnapshotReader(root, name).latest())
        loaded.freeze_dense()
        out[name] = loaded
    return out


def rerank_label(config: RerankConfig) -> str:
    """Name of a re-ranking setting in the report."""
    return f"re-ranked, diversity {config.diversity:g}"


def variant(d: float) -> str:
    """Name of the pre-ranker with distillation weight `d`."""
    return "labels" if d == 0 else f"distill-{d:g}"


def run_dataset(name: str, cols: Columns, settings: Settings, progress: Progress) -> Summary:
    """Warm-up, then the prequential requests of every batch; the figures per request."""
    s = settings
    cut = int(len(cols) * s.warmup)
    warm = cols.take(np.arange(cut))
    rest = cols.take(np.arange(cut, len(cols))).batches(s.batch)
    config = LearnConfig(batch_size=s.batch, seed=7)
    task = progress.add_task(f"{name}: warm-up", total=1 + len(s.distill))
    ranker, retriever = warm_up(
        warm, config, RankerConfig(), RetrieverConfig(), s.warm_batch, s.warm_epochs
    )
    progress.advance(task)
    emb = config.embedding(16)
    states: dict[str, object] = {"ranker": ranker, "retriever": retriever}
    for d in s.distill:
        pre = PreRankerState.create(PreRankerConfig(distill=d), emb, seed=config.seed)
        for epoch in range(s.warm_epochs):
            update = {"batch_size": s.warm_batch, "seed": config.seed + epoch}
            prerank_pass(pre, warm, config.model_copy(update=update), teacher=ranker)
        states[variant(d)] = pre
        progress.advance(task)
    with tempfile.TemporaryDirectory() as tmp:
        online = _published_copy(states, Path(tmp))
    for state in online.values():
        state.set_embedding_lr(config.online_emb_lr)
    ranker, retriever = online.pop("ranker"), online.pop("retriever")
    prerankers = online
    known = Known()
    known.add(warm)
    summary = Summary()
    rng = np.random.default_rng(0)
    task = progress.add_task(f"{name}: prequential requests", total=len(rest))
    for b in rest:
        for req in requests_of(
            b, ranker, retriever, prerankers, known, s.fusion, s.candidates, s.users, rng
        ):
            measure(req, s.keep, retriever, s.rerank, summary)
        ranker.train_step(b, None)
        retriever.train_step(b, None)
        for pre in prerankers.values():
            pre.train_step(b, None, ranker)
        known.add(b)
        progress.advance(task)
    summary.add("requests", float(len(summary.values.get("rank ms", []))))
    return summary


def report(name: str, summary: Summary, settings: Settings) -> list[str]:
    """Markdown lines of one data set."""
    s = settings
    variants = [variant(d) for d in s.distill]
    n = int(sum(summary.values["requests"]))
    lines = [
        f"## {name}",
        "",
        f"{n} requests, up to {s.candidates} candidates each, pre-ranked to {s.keep}.",
        "",
        f"| cut to {s.keep} by | keep@{TOP}/{s.keep} (mean) | NDCG@{NDCG_AT} funnel "
        "| scoring ms (median) |",
        "|---|---|---|---|",
        f"| retriever order (peer) | {summary.mean('keep retriever'):.3f} | - | - |",
    ]
    for v in variants:
        lines.append(
            f"| pre-ranker, {v} | {summary.mean(f'keep {v}'):.3f} | "
            f"{summary.mean(f'ndcg funnel {v}'):.4f} | {summary.median(f'prerank ms {v}'):.1f} |"
        )
    lines.append(
        f"| (ranker on every candidate) | 1.000 | {summary.mean('ndcg ranker-only'):.4f} | "
        f"{summary.median('rank ms'):.1f} |"
    )
    r = s.rerank[0]
    lines += [
        "",
        f"Re-ranking (MMR, pool {r.pool}, at most {r.max_per_category} per category / "
        f"{r.max_per_author} per author in {r.window}), top {NDCG_AT} of the funnel:",
        "",
        "| list | intra-list diversity | categories | NDCG@20 |",
        "|---|---|---|---|",
    ]
    for label in ("fused", *(rerank_label(c) for c in s.rerank)):
        lines.append(
            f"| {label} | {summary.mean(f'ild {label}'):.4f} | "
            f"{summary.mean(f'categories {label}'):.2f} | {summary.mean(f'ndcg {label}'):.4f} |"
        )
    lines.append("")
    lines.append(f"re-rank time per list (median): {summary.median('rerank ms'):.2f} ms")
    lines.append("")
    return lines


def main(
    warmup: float = typer.Option(0.3, help="Share of each stream used for full training."),
    batch: int = typer.Option(1024, help="Samples per prequential batch."),
    warm_batch: int = typer.Option(128, help="Batch size of the warm-up's full training."),
    warm_epochs: int = typer.Option(3, help="Passes of the warm-up's full training."),
    candidates: int = typer.Option(2000, help="Candidates per request (retriever's top)."),
    keep: int = typer.Option(200, help="Candidates the pre-ranker hands to the ranker."),
    users: int = typer.Option(30, help="Requests per scored batch (users with a click)."),
    distill: str = typer.Option("0,1", help="Pre-ranker distillation weights to compare."),
    diversity: str = typer.Option(
        f"0,{RerankConfig().diversity:g},0.6,0.9", help="MMR diversity weights to compare."
    ),
    limit: int | None = typer.Option(None, help="Cap on source rows (quick runs)."),
    only: str | None = typer.Option(None, help="Run one data set: movielens or kuairand."),
) -> None:
    """Run the pre-ranking and re-ranking benchmark on both data sets; print the tables."""
    from bench.common import DATA
    from streams.sources.kuairand import KuaiRandSource
    from streams.sources.movielens import MovieLensSource

    torch.set_num_threads(LearnConfig().threads)
    settings = Settings(
        warmup, batch, warm_batch, warm_epochs, candidates, keep, users,
        tuple(float(d) for d in distill.split(",")),
        tuple(RerankConfig(diversity=float(d)) for d in diversity.split(",")),
    )  # fmt: skip
    sets = {
        "movielens": (
            "MovieLens-100K",
            lambda: MovieLensSource(DATA / "movielens-100k" / "u.data", limit=limit),
        ),
        "kuairand": (
            "KuaiRand subset",
            lambda: KuaiRandSource(
                DATA / "kuairand-27k-likehate" / "processed_standard_kcore_15.tsv", limit=limit
            ),
        ),
    }
    lines = ["# Pre-ranking and re-ranking (bench.prerank)", ""]
    with Progress(console=console) as progress:
        for key, (name, source) in sets.items():
            if only is not None and key != only:
                continue
            progress.console.print(f"{name}: joining events")
            cols = join_events(_events(source()))
            summary = run_dataset(name, cols, settings, progress)
            section = report(name, summary, settings)
            progress.console.print("\n".join(section), markup=False, highlight=False)
            lines += section
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"prerank{'_' + only if only else ''}.md"
    path.write_text("\n".join(lines) + "\n")
    console.print(f"report: {path}")


if __name__ == "__main__":
    typer.run(main)
