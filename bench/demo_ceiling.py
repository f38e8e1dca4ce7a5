"""What any recommender can reach on the demo's interest lift for its 50 random users.

The synthetic world of `make demo` (`streams.sources.synthetic`, the demo's sizes and rate) is
replayed up to `--seconds` of event time; for each of the 50 users the demo's quality probe
draws (`numpy.random.default_rng(0)`, as `infra.demo.probes.quality`), the posterior mean of
their interests given every impression and click of the world's own stream is computed (prior
samples weighted by the world's exact likelihood: the impression mixture of interests and
popularity, the click model with quality and position), and the lift of a list of the most
likely category is averaged. Also printed: the same for the category with most impressions,
and with 3x clicks plus impressions minus half the total spread by the global category share
(the context channel's rule, argmax). The demo's own shown answers are not in the world's
stream, so they are not counted here::

    .venv/bin/python -m bench.demo_ceiling --seed 7 --seconds 280
"""

from __future__ import annotations

import argparse

import numpy as np

from streams.sources.synthetic import SyntheticConfig, SyntheticSource


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=280.0)
    args = parser.parse_args()
    c = SyntheticConfig(
        seed=args.seed, users=2_000, notes=5_000, start_ms=0, request_gap_ms=1000 / 1500 * 10
    )
    src = SyntheticSource(c, limit=10**12)
    end = int(args.seconds * 1000)
    imp, clk = [], []
    for ev, count, _ in src._blocks():
        cols = {f: v[:count] for f, v in ev.items()}
        keep = cols["ts"] < end
        kind = cols["type"][keep]
        users, notes, pos = cols["user"][keep], cols["note"][keep], cols["pos"][keep]
        imp.append(np.stack([users[kind == 0], notes[kind == 0], pos[kind == 0]], 1))
        clk.append(np.stack([users[kind == 1], notes[kind == 1]], 1))
        if cols["ts"][-1] >= end:
            break
    shown, clicks = np.concatenate(imp), np.concatenate(clk)
    drawn = np.random.default_rng(0).choice(c.users, size=50, replace=False)
    cat = src.note_category
    mass = np.diff(np.concatenate([[0.0], src._global_cum]))
    g = np.bincount(cat, weights=mass, minlength=c.categories)
    prior = np.random.default_rng(1).dirichlet(np.full(c.categories, c.interest_alpha), 40_000)
    affinity = np.log(prior * c.categories + 0.05)
    got: dict[str, list[float]] = {"posterior": [], "impressions": [], "channel rule": []}
    empty = 0
    for u in drawn:
        w = src.interest[u]
        mine = shown[shown[:, 0] == u]
        if not len(mine):
            empty += 1
            for v in got.values():
                v.append(w.mean())
            continue
        clicked = set(clicks[clicks[:, 0] == u, 1].tolist())
        y = np.array([n in clicked for n in mine[:, 1]])
        cs = cat[mine[:, 1]]
        ll = np.log(0.5 * prior[:, cs] + 0.5 * g[cs]).sum(1)
        logit = c.click_bias + 0.8 * affinity[:, cs] + src.note_quality[mine[:, 1]]
        p = 1 / (1 + np.exp(-(logit - c.position_decay * mine[:, 2])))
        ll += np.where(y, np.log(p), np.log1p(-p)).sum(1)
        post = np.exp(ll - ll.max()) @ prior
        n_imp = np.bincount(cs, minlength=c.categories).astype(float)
        n_clk = np.bincount(cs[y], minlength=c.categories).astype(float)
        got["posterior"].append(w[np.argmax(post)])
        got["impressions"].append(w[np.argmax(n_imp)])
        got["channel rule"].append(w[np.argmax(3 * n_clk + n_imp - 0.5 * n_imp.sum() * g)])
    base = 1.0 / c.categories
    print(f"seed {args.seed}, {args.seconds:.0f} s: {empty} of 50 users without any event")
    for name, v in got.items():
        print(f"{name:14s} lift {np.mean(v) / base:.2f}x")
    print(f"{'oracle':14s} lift {np.mean([src.interest[u].max() for u in drawn]) / base:.2f}x")


if __name__ == "__main__":
    main()
