"""Where the interest signal goes between the events and `/recommend`, stage by stage.

Run on the directory of a finished demo run (its settings, snapshots, sample log and ground
truth; its Redis keys must still be there)::

    .venv/bin/python -m bench.demo_stages ~/.local/share/streamrec/demo/<run id>

For the demo's 50 random users and the 50 users with the most clicked samples it prints the
interest lift (mean true interest of the notes' categories over the mean interest, as
`infra.demo.probes.quality`) of: the retriever's top n by cosine, its whole `retrieve_k`
candidate pool, the `rank_k` unseen candidates the ranker sees, the ranker's top n (click
only and fused, which is `/recommend`), the best n of the ranked pool (what a perfect ranker
could reach), and the oracle's list; the samples per user (what trained the user's rows),
whether the user has an own embedding row, how alike the users' query vectors are, and how
concentrated the lists are (distinct notes in 50 lists, share of the most common note).
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from features.samples import read_sample_log
from infra.config import load_settings
from infra.demo.probes import oracle_interest
from infra.service import service_for
from serving.recommender import Recommender


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="context channel settings to compare, e.g. share=1,sharpen=4 (repeatable)",
    )
    args = parser.parse_args()
    run_dir = args.run_dir.resolve()
    settings = load_settings(run_dir / "settings.yaml", dict(os.environ))
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    service = service_for(settings, redis_url)
    service.watcher.refresh()
    rec = service.recommender

    interest = pq.read_table(run_dir / "truth" / "users.parquet").to_pydict()
    notes = pq.read_table(run_dir / "truth" / "notes.parquet").to_pydict()
    category = {n: int(c[1:]) for n, c in zip(notes["note_id"], notes["category"], strict=True)}
    note_cats = np.array([int(c[1:]) for c in notes["category"]])
    log = read_sample_log(settings.paths.sample_log).select(["user_id", "click"]).to_pandas()
    samples = log.groupby("user_id").size()
    clicked = log[log.click == 1].groupby("user_id").size()
    rng = np.random.default_rng(0)
    drawn = rng.choice(len(interest["user_id"]), size=50, replace=False).tolist()
    index = {u: j for j, u in enumerate(interest["user_id"])}
    active = [index[u] for u in sorted(clicked.index, key=lambda u: (-clicked[u], u))[:50]]
    for name, users in (("random", drawn), ("active", active)):
        print(f"\n## {name} users ({len(users)})")
        report(rec, users, interest, category, note_cats, samples, clicked, args.n)
    for spec in args.variant:
        pairs = (kv.split("=") for kv in spec.split(","))
        update = {k: int(v) if k == "probe_per_category" else float(v) for k, v in pairs}
        config = rec.config.model_copy(
            update={"context": rec.config.context.model_copy(update=update)}
        )
        other = Recommender(rec.watcher, rec.features, rec.exposure, config)
        lifts = []
        for users in (drawn, active):
            got, base = [], []
            for u in users:
                w = np.asarray(interest["interest"][u])
                items = other.recommend(interest["user_id"][u], args.n).items
                if not items:  # everything seen (as the demo, skipped)
                    continue
                got.append(np.mean([w[category[i.note_id]] for i in items]))
                base.append(w.mean())
            lifts.append(np.mean(got) / np.mean(base))
        print(f"context {spec}: /recommend lift random {lifts[0]:.2f}x, active {lifts[1]:.2f}x")


def report(rec, users, interest, category, note_cats, samples, clicked, n) -> None:
    """Print the stage lifts of `users` (rows of the truth)."""
    view = rec.watcher.current()
    stages: dict[str, list[float]] = {}
    base, tops, queries = [], [], []
    own_rows = 0
    user_table = view.retriever._state.store["user"]
    for u in users:
        user = interest["user_id"][u]
        w = np.asarray(interest["interest"][u])

        def lift_of(ids: list[str], w=w) -> float:
            ids = [i for i in ids if i in category]
            return float(np.mean([w[category[i]] for i in ids])) if ids else float(w.mean())

        stats, _ = rec.counts("user_stats", [user])
        length = max(view.ranker.history_len, view.retriever.history_len)
        history, _ = rec.history(user, length)
        query = view.retriever.user_vector(user, stats[0], history)
        queries.append(query)
        own_rows += user in user_table.index
        ids, _ = view.index.search(query, rec.config.retrieve_k)
        seen = rec.exposure.seen(user, ids)
        unseen = [i for i, s in zip(ids, seen, strict=True) if not s][: rec.config.rank_k]
        note_stats, _ = rec.counts("note_stats", unseen)
        authors, cats = view.retriever.side_info(unseen)
        preds = view.ranker.score(
            user, unseen, authors, cats, stats[0], note_stats,
            durations=view.retriever.durations(unseen), history=history,
        )  # fmt: skip
        from serving.recommender import fuse

        fused = fuse(preds, rec.config.fusion)
        answer = rec.recommend(user, n)
        best = sorted(unseen, key=lambda i: -w[category[i]] if i in category else 0)[:n]
        rows = {
            "retriever top n (cosine)": ids[:n],
            "retriever pool (retrieve_k)": ids,
            "unseen pool (rank_k)": unseen,
            "unseen top n by cosine": unseen[:n],
            "ranker top n, click only": [unseen[j] for j in np.argsort(-preds["click"])[:n]],
            "ranker top n, fused": [unseen[j] for j in np.argsort(-fused, kind="stable")[:n]],
            "/recommend": [s.note_id for s in answer.items],
            "best n of the unseen pool": best,
        }
        for k, v in rows.items():
            stages.setdefault(k, []).append(lift_of(v))
        stages.setdefault("oracle", []).append(oracle_interest(w, note_cats, n))
        base.append(w.mean())
        tops.append([s.note_id for s in answer.items])
    for k, v in stages.items():
        print(f"{k:32s} lift {np.mean(v) / np.mean(base):5.2f}x")
    per_user = np.array([samples.get(interest["user_id"][u], 0) for u in users])
    per_click = np.array([clicked.get(interest["user_id"][u], 0) for u in users])
    print(
        f"samples per user: median {np.median(per_user):.0f}, mean {per_user.mean():.1f}, "
        f"zero {np.mean(per_user == 0):.0%}; clicked samples: median {np.median(per_click):.0f}, "
        f"zero {np.mean(per_click == 0):.0%}; own user row {own_rows}/{len(users)}"
    )
    q = np.array(queries)
    sim = q @ q.T
    off = sim[~np.eye(len(q), dtype=bool)]
    print(f"query cosine between users: mean {off.mean():.3f}, p10 {np.quantile(off, 0.1):.3f}")
    flat = [i for t in tops for i in t]
    counts = Counter(flat)
    first = Counter(t[0] for t in tops if t)
    print(
        f"distinct notes in {len(tops)} lists: {len(counts)} of {len(flat)}; most common "
        f"note in {counts.most_common(1)[0][1]} lists; most common first note in "
        f"{first.most_common(1)[0][1]} lists"
    )


if __name__ == "__main__":
    main()
