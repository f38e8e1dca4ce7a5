"""The co-click job: ItemCF and Swing neighbours of every note, kept current from the clicks.

Formulas (seeds 002 Part 2, 1.1-1.2; DESIGN.md "The funnel"). `I(u)` is the set of user u's
last `user_window` distinct clicked notes, `U(i)` the users with note i in that set:

- ItemCF with the user-activity penalty (ItemCF-IUF): a user who clicks everything says little
  about any pair, so each co-clicking user counts 1 / log(1 + |I(u)|)::

      itemcf(i, j) = sum_{u in U(i) & U(j)} 1 / log(1 + |I(u)|)  /  sqrt(|U(i)| |U(j)|)

- Swing: two items are similar when *unrelated* users both clicked them - every pair of users
  {u, v} who both clicked i and j adds less the more notes they share (a small circle of users
  who click the same things counts little)::

      swing(i, j) = sum_{{u, v} in U(i) & U(j), u != v} 1 / (alpha + |I(u) & I(v)|)

Dataflow: Kafka batches -> the ingest step (dead letters, duplicates dropped) -> one `Part` per
batch (its clicks and what the fresh and author indexes need) -> one stateful step holding the
click graph (a global key: similarities need every user) -> `Refresh` updates -> the Redis sink
(`features.neighbours.NeighbourStore`). A click marks the notes whose lists it changes:
for both kinds the user's notes (their pair weights changed) and the clicked (and any evicted)
note; for ItemCF also every note co-clicked with those two (their `|U|` changed). At most every
`refresh_s` seconds of wall clock, and at the end of a bounded input, the marked notes' lists
are recomputed exactly from the graph (sparse products) and written. So after the end of the
input the stored lists equal `streams.cf_reference.expected_neighbours` of the same events
(tests/streams/test_itemcf.py).

Beside the lists the step keeps, from every event, each note's first-seen time, the fresh notes
(first seen within `fresh_ms`, fewer than `trust_impressions` impressions) and each author's
newest notes: the fresh and author channels' indexes. Their changes are written at most
`refresh_s` after the first of them even when a slow recomputation has stretched its interval
(without the lists and without raising the job's mark), so a new note reaches the fresh channel
about a second after its first event whatever the lists cost.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise

import bytewax.operators as op
import numpy as np
import scipy.sparse as sp
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulLogic
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from features.neighbours import FreshNote, NeighbourStore
from features.redis_conn import connect
from features.windows import TYPE_METRIC
from streams.config import DEFAULT_LIMITS, CoClickConfig, EventLimits
from streams.ingest import Columns, ingest_flow
from streams.kafka_io import RawBatch
from streams.retry import with_retry

FLOW = "itemcf"
DEFAULT_COCLICK = CoClickConfig()
CLICK = TYPE_METRIC["click"]
IMPRESSION = TYPE_METRIC["impression"]
DIGITS = 9
"""Scores are rounded to this many decimals (ties then break by note id, the same in the job
and in the oracle, whatever the order of the floating-point sums)."""

Row = tuple[list[str], list[float]]


@dataclass(frozen=True, slots=True)
class Part:
    """What the co-click step needs of one batch."""

    clicks: list[tuple[str, str, int]]
    """(user, note, ts) of the batch's clicks, in arrival order."""
    seen: list[tuple[str, int, bool, str, str]]
    """(note, ts, is impression, author, category) of every event, in arrival order."""
    hwm: int


def part_of(cols: Columns, hwm: int | None) -> list[tuple[str, Part]]:
    """The batch's clicks and sightings as one part of the global key."""
    if not len(cols.ts) or hwm is None:
        return []
    at = np.flatnonzero(cols.kind == CLICK).tolist()
    clicks = [(cols.users[i], cols.notes[i], int(cols.ts[i])) for i in at]
    shown = (cols.kind == IMPRESSION).tolist()
    seen = [
        (e.note_id, e.ts, s, e.author_id or "", e.category or "")
        for e, s in zip(cols.events, shown, strict=True)
    ]
    return [("all", Part(clicks, seen, hwm))]


def top_k(ids: list[str] | np.ndarray, scores: np.ndarray, k: int) -> Row:
    """The `k` best (rounded score desc, then note id) of `ids`, scores > 0 only."""
    rounded = np.round(np.asarray(scores, dtype=np.float64), DIGITS)
    keep = np.flatnonzero(rounded > 0)
    if len(keep) > k:  # the k-th best value; every note tied with it stays for the tie-break
        kth = np.partition(rounded[keep], len(keep) - k)[len(keep) - k]
        keep = keep[rounded[keep] >= kth]
    names = np.asarray(ids, dtype=object)[keep]
    order = np.lexsort((names, -rounded[keep]))[:k]
    return names[order].tolist(), rounded[keep][order].tolist()


@dataclass
class ClickGraph:
    """The click graph the similarities are computed from, and the notes to recompute."""

    window: int
    user_notes: dict[str, dict[str, None]] = field(default_factory=dict)
    """user -> their kept notes, least recently clicked first (at most `window`)."""
    note_users: dict[str, dict[str, int]] = field(default_factory=dict)
    """note -> users keeping it -> time of their latest click on it (empty ones removed)."""
    user_index: dict[str, int] = field(default_factory=dict)
    """user -> their row in `matrix` (the order users were first seen)."""
    dirty: set[str] = field(default_factory=set)
    """Notes whose lists of both kinds changed."""
    renormed: set[str] = field(default_factory=set)
    """Notes whose clicker count changed: their co-clicked notes' ItemCF lists changed."""

    def click(self, user: str, note: str, ts: int) -> None:
        """Add one click (a note already kept only moves to the user's most recent)."""
        notes = self.user_notes.get(user)
        if notes is None:
            notes = self.user_notes[user] = {}
            self.user_index[user] = len(self.user_index)
        if note in notes:
            del notes[note]
            notes[note] = None
            users = self.note_users[note]
            if ts > users[user]:
                users[user] = ts
                self.dirty.add(note)  # its most recent users may change (Swing reads them)
            return
        self.dirty.update(notes)
        self.dirty.add(note)
        self.renormed.add(note)
        notes[note] = None
        self.note_users.setdefault(note, {})[user] = ts
        if len(notes) > self.window:
            evicted = next(iter(notes))
            del notes[evicted]
            users = self.note_users[evicted]
            del users[user]
            if not users:
                del self.note_users[evicted]
            self.renormed.add(evicted)

    def matrix(self) -> tuple[list[str], dict[str, int], sp.csr_matrix]:
        """(note ids, note -> column, (users, notes) 0/1 CSR of the kept clicks)."""
        notes = list(self.note_users)
        col = {n: j for j, n in enumerate(notes)}
        rows, cols = [], []
        for i, kept in enumerate(self.user_notes.values()):
            rows.extend([i] * len(kept))
            cols.extend(col[n] for n in kept)
        data = np.ones(len(rows), dtype=np.float64)
        r = sp.csr_matrix((data, (rows, cols)), shape=(len(self.user_notes), len(notes)))
        return notes, col, r

    def recent_users(self, note: str, n: int) -> np.ndarray:
        """Row indices (in `matrix` order) of the `n` users who clicked `note` last (by event
        time, then user id: the same whatever order partitions arrive in)."""
        clicked = self.note_users.get(note, {})
        users = sorted(clicked, key=lambda u: (clicked[u], u))[-n:]
        return np.array([self.user_index[u] for u in users], dtype=np.int64)


def kth_best(
    row: np.ndarray, values: np.ndarray, n: int, k: int, cells: int = 1 << 22
) -> np.ndarray:
    """(n,) each row's `k`-th largest value, -inf for a row with at most `k` values.

    Args:
        row: each value's row, non-decreasing.
        values: the values.
        n: rows.
        k: the rank wanted.
        cells: most cells of one padded (rows, widest row) block partitioned at once.
    """
    count = np.bincount(row, minlength=n)
    out = np.full(n, -np.inf)
    big = np.flatnonzero(count > k)
    if not len(big):
        return out
    starts = np.concatenate(([0], np.cumsum(count)))
    slot = np.full(n, -1)
    per_block = max(1, cells // int(count[big].max()))
    for lo in range(0, len(big), per_block):  # blocks of rows, each padded to its widest
        block = big[lo : lo + per_block]
        width = int(count[block].max())
        slot[block] = np.arange(len(block))
        at = np.arange(starts[block[0]], starts[block[-1] + 1])
        at = at[slot[row[at]] >= 0]
        pad = np.full((len(block), width), -np.inf)
        pad[slot[row[at]], at - starts[row[at]]] = values[at]
        out[block] = np.partition(pad, width - k, axis=1)[:, width - k]
        slot[block] = -1
    return out


def rows_top_k(
    sims: sp.csr_matrix, own: np.ndarray, names: np.ndarray, order: np.ndarray, k: int
) -> list[Row]:
    """Each row's `k` best columns (rounded score desc, then note id), scores > 0 only, the
    row's own note (`own[row]`) left out: `top_k` for every row of `sims` at once.

    Args:
        sims: (rows, notes) scores.
        own: (rows,) each row's own column.
        names: (notes,) note ids.
        order: (notes,) each note id's place in sorted order (the tie-break).
        k: list length.
    """
    sims = sims.tocsr()
    n = sims.shape[0]
    row = np.repeat(np.arange(n), np.diff(sims.indptr))
    rounded = np.round(sims.data.astype(np.float64), DIGITS)
    keep = (rounded > 0) & (sims.indices != own[row])
    row, cols, rounded = row[keep], sims.indices[keep], rounded[keep]
    # only what can be in a list is sorted: in a row with more than k scores, those at least
    # its k-th best (ties with it included, the tie-break decides among them)
    keep = rounded >= kth_best(row, rounded, n, k)[row]
    row, cols, rounded = row[keep], cols[keep], rounded[keep]
    at = np.lexsort((order[cols], -rounded, row))
    row, cols, rounded = row[at], cols[at], rounded[at]
    starts = np.searchsorted(row, np.arange(n + 1))
    rank = np.arange(len(row)) - starts[row]
    take = rank < k
    row, cols, rounded = row[take], cols[take], rounded[take]
    bounds = np.searchsorted(row, np.arange(n + 1)).tolist()
    ids, scores = names[cols].tolist(), rounded.tolist()
    return [(ids[a:b], scores[a:b]) for a, b in pairwise(bounds)]


def _name_order(notes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    names = np.array(notes, dtype=object)
    order = np.empty(len(notes), dtype=np.int64)
    order[np.argsort(names, kind="stable")] = np.arange(len(notes))
    return names, order


def itemcf_sims(r: sp.csr_matrix, idx: np.ndarray) -> sp.csr_matrix:
    """(len(idx), notes) ItemCF scores of the notes in columns `idx` (module docstring)."""
    activity = np.asarray(r.sum(axis=1)).ravel()  # (users,)
    weight = 1.0 / np.log1p(np.maximum(activity, 1.0))
    norm = 1.0 / np.sqrt(np.asarray(r.sum(axis=0)).ravel())  # (notes,) 1 / sqrt(|U(j)|)
    rt = r.T.tocsr()
    co = (rt[idx] @ sp.diags(weight) @ r).tocsr()  # (D, notes) weighted co-clicks
    return (sp.diags(norm[idx]) @ co @ sp.diags(norm)).tocsr()


def itemcf_rows(
    notes: list[str], col: dict[str, int], r: sp.csr_matrix, which: Iterable[str], k: int
) -> dict[str, Row]:
    """ItemCF top-`k` lists of the notes `which` (module docstring's formula)."""
    out: dict[str, Row] = {}
    which = list(which)
    present = [n for n in which if n in col]
    out.update({n: ([], []) for n in which if n not in col})
    if not present:
        return out
    idx = np.array([col[n] for n in present])
    names, order = _name_order(notes)
    out.update(zip(present, rows_top_k(itemcf_sims(r, idx), idx, names, order, k), strict=True))
    return out


def itemcf_changed(
    notes: list[str], col: dict[str, int], r: sp.csr_matrix, dirty: set[str],
    renormed: set[str], k: int,
) -> dict[str, Row]:  # fmt: skip
    """The ItemCF lists that changed since the last recomputation, recomputed exactly: the
    dirty and renormed notes' and every note co-clicked with a renormed one (its score with it
    changed by |U|, and that note is in most lists: their stored scores change)."""
    which = set(dirty) | set(renormed)
    moved = [col[n] for n in renormed if n in col]
    if moved:
        users = np.asarray(r[:, moved].sum(axis=1)).ravel() > 0
        near = np.asarray(r[users].sum(axis=0)).ravel() > 0
        which.update(notes[j] for j in np.flatnonzero(near).tolist())
    return itemcf_rows(notes, col, r, sorted(which), k)


def user_bits(r: sp.csr_matrix) -> np.ndarray:
    """(users, words) each user's kept notes as a bit set (the overlaps |I(u) & I(v)|)."""
    bits = np.zeros((r.shape[0], (r.shape[1] + 63) // 64), dtype=np.uint64)
    rows = np.repeat(np.arange(r.shape[0]), np.diff(r.indptr))
    one = np.left_shift(np.uint64(1), (r.indices % 64).astype(np.uint64))
    np.bitwise_or.at(bits, (rows, r.indices // 64), one)
    return bits


def swing_rows(
    graph: ClickGraph,
    notes: list[str],
    col: dict[str, int],
    r: sp.csr_matrix,
    which: Iterable[str],
    k: int,
    alpha: float,
    users_per_note: int,
    chunk: int = 64,
) -> dict[str, Row]:
    """Swing top-`k` lists of the notes `which` (module docstring's formula), the pairs of
    each note's `users_per_note` most recent clickers; `chunk` notes per sparse product."""
    out: dict[str, Row] = {}
    todo: list[tuple[str, np.ndarray]] = []
    for n in which:
        users = graph.recent_users(n, users_per_note) if n in col else np.zeros(0, np.int64)
        if len(users) < 2:
            out[n] = ([], [])
        else:
            todo.append((n, users))
    if not todo:
        return out
    bits = user_bits(r)
    names, order = _name_order(notes)
    pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for lo in range(0, len(todo), chunk):
        part = todo[lo : lo + chunk]
        sizes = np.array([len(u) for _, u in part])
        base = np.cumsum(sizes) - sizes
        members = np.concatenate([u for _, u in part])  # (M,) the blocks' users, stacked
        left, right = [], []
        for b, m in enumerate(sizes.tolist()):  # every unordered pair u < v within a block
            if m not in pairs:
                pairs[m] = np.triu_indices(m, 1)
            ii, jj = pairs[m]
            left.append(base[b] + ii)
            right.append(base[b] + jj)
        pi, pj = np.concatenate(left), np.concatenate(right)
        shared = np.bitwise_count(bits[members[pi]] & bits[members[pj]]).sum(axis=1)
        rows = len(members)
        pair = sp.csr_matrix((1.0 / (alpha + shared), (pi, pj)), shape=(rows, rows))
        stacked = r[members]  # (M, notes)
        # [(b, u), j'] = r[u, j'] sum_{v > u} pair[u, v] r[v, j']; summed over u per block:
        # each unordered pair {u, v} of block b once, for every note j' both kept
        weighted = stacked.multiply(pair @ stacked)
        block = np.repeat(np.arange(len(part)), sizes)
        sums = sp.csr_matrix((np.ones(rows), (block, np.arange(rows))), shape=(len(part), rows))
        own = np.array([col[n] for n, _ in part])
        lists = rows_top_k(sums @ weighted, own, names, order, k)
        out.update(zip((n for n, _ in part), lists, strict=True))
    return out


def changed_lists(graph: ClickGraph, config: CoClickConfig) -> dict[str, dict[str, Row]]:
    """kind -> note -> its recomputed list, for every list the clicks since the last call
    changed ([] when the note has no neighbours left); clears the marks."""
    notes, col, r = graph.matrix()
    dirty, renormed = graph.dirty, graph.renormed
    graph.dirty, graph.renormed = set(), set()
    rows = {"itemcf": itemcf_changed(notes, col, r, dirty, renormed, config.top_k)}
    if config.swing:
        rows["swing"] = swing_rows(
            graph, notes, col, r, sorted(dirty), config.top_k, config.alpha, config.swing_users
        )
    return rows


@dataclass
class CoClickState:
    """Recoverable state of the co-click step."""

    graph: ClickGraph
    first_seen: dict[str, int] = field(default_factory=dict)
    """note -> event time it was first seen (every note ever seen)."""
    fresh: dict[str, list] = field(default_factory=dict)
    """Fresh note -> [first seen, impressions, category, author]."""
    authors: dict[str, dict[str, int]] = field(default_factory=dict)
    """author -> their newest notes -> first seen (at most `per_author`)."""
    hwm: int | None = None
    """Largest partition high-water mark seen (epoch ms)."""
    fresh_changed: set[str] = field(default_factory=set)
    """Fresh notes to write at the next recomputation."""
    stale: set[str] = field(default_factory=set)
    """Notes no longer fresh, to remove at the next recomputation."""
    authors_changed: dict[str, dict[str, int]] = field(default_factory=dict)
    """author -> notes -> first seen, to add at the next recomputation."""


@dataclass(frozen=True)
class Refresh:
    """What one recomputation writes."""

    rows: dict[str, dict[str, Row]]
    """kind -> note -> its new list ([] deletes it)."""
    authors: dict[str, dict[str, int]]
    """author -> notes new to their newest -> first seen."""
    fresh: list[FreshNote]
    """Fresh notes whose record changed."""
    stale: list[str]
    """Notes no longer fresh."""
    hwm: int | None
    """The job's event-time high-water mark after this update."""
    seconds: float = 0.0
    """Wall-clock time the recomputation took."""


class CoClickLogic(StatefulLogic[Part, Refresh, CoClickState]):
    """The co-click step (module docstring)."""

    def __init__(self, state: CoClickState, config: CoClickConfig, recoverable: bool) -> None:
        self.state, self.config, self.recoverable = state, config, recoverable
        self._due: datetime | None = None
        self._last_s = 0.0
        """Wall-clock seconds the last recomputation took."""
        self._index_due: datetime | None = None
        """When the fresh and author changes are written without a recomputation (at most
        `refresh_s` after the first of them: a new note must not wait for a slow one)."""

    def apply(self, part: Part) -> None:
        """Add a batch to the state."""
        st = self.state
        for user, note, ts in part.clicks:
            st.graph.click(user, note, ts)
        for note, ts, shown, author, cat in part.seen:
            first = st.first_seen.get(note)
            if first is None:
                st.fresh[note] = [ts, 0, cat, author]
                st.fresh_changed.add(note)
            if first is None or ts < first:  # partitions interleave: the earliest time wins
                st.first_seen[note] = ts
                if note in st.fresh:
                    st.fresh[note][0] = ts
                    st.fresh_changed.add(note)
                if author:
                    self._author_note(author, note, ts)
            info = st.fresh.get(note)
            if info is not None:
                if shown:
                    info[1] += 1
                    st.fresh_changed.add(note)
                if not info[2] and cat:
                    info[2] = cat
        st.hwm = part.hwm if st.hwm is None else max(st.hwm, part.hwm)

    def _author_note(self, author: str, note: str, ts: int) -> None:
        st = self.state
        kept = st.authors.setdefault(author, {})
        kept[note] = ts
        st.authors_changed.setdefault(author, {})[note] = ts
        if len(kept) > self.config.per_author:
            del kept[min(kept, key=lambda n: (kept[n], n))]

    def refresh(self) -> Refresh:
        """Recompute the marked notes' lists; the fresh and author changes since the last."""
        start = time.perf_counter()
        st, cfg = self.state, self.config
        rows: dict[str, dict[str, Row]] = {}
        if st.graph.dirty or st.graph.renormed:
            rows = changed_lists(st.graph, cfg)
        horizon = (st.hwm or 0) - cfg.fresh_ms
        for note, info in list(st.fresh.items()):
            if info[1] >= cfg.trust_impressions or info[0] < horizon:
                del st.fresh[note]
                st.stale.add(note)
        fresh = [
            FreshNote(n, st.fresh[n][0], st.fresh[n][2], st.fresh[n][3], st.fresh[n][1])
            for n in sorted(st.fresh_changed)
            if n in st.fresh
        ]
        authors, stale = st.authors_changed, sorted(st.stale)
        st.fresh_changed, st.stale, st.authors_changed = set(), set(), {}
        return Refresh(rows, authors, fresh, stale, st.hwm, time.perf_counter() - start)

    def indexes(self) -> Refresh:
        """The fresh and author changes since the last write, without a recomputation (the
        lists, the notes no longer fresh and the job's mark wait for it: the mark says the
        lists are current)."""
        st = self.state
        fresh = [
            FreshNote(n, st.fresh[n][0], st.fresh[n][2], st.fresh[n][3], st.fresh[n][1])
            for n in sorted(st.fresh_changed)
            if n in st.fresh
        ]
        authors = st.authors_changed
        st.fresh_changed, st.authors_changed = set(), {}
        return Refresh({}, authors, fresh, [], None)

    def _index_pending(self) -> bool:
        return bool(self.state.fresh_changed or self.state.authors_changed)

    def _pending(self) -> bool:
        st = self.state
        return bool(
            st.graph.dirty
            or st.graph.renormed
            or st.fresh_changed
            or st.stale
            or st.authors_changed
        )

    def on_item(self, value: Part) -> tuple[list[Refresh], bool]:
        self.apply(value)
        now = datetime.now(UTC)
        if self._due is None:
            # a recomputation slower than half the interval stretches it: at most a third of
            # the step's time goes to recomputing, the rest keeps up with the input
            self._due = now + timedelta(seconds=max(self.config.refresh_s, 2 * self._last_s))
        if self._index_due is None and self._index_pending():
            self._index_due = now + timedelta(seconds=self.config.refresh_s)
        return self._due_now(now)

    def _due_now(self, now: datetime) -> tuple[list[Refresh], bool]:
        """The recomputation when it is due, else the index changes when they are."""
        if self._due is not None and now >= self._due:
            return self._recompute()
        if self._index_due is not None and now >= self._index_due:
            self._index_due = None
            if self._index_pending():
                return [self.indexes()], StatefulLogic.RETAIN
        return [], StatefulLogic.RETAIN

    def _recompute(self) -> tuple[list[Refresh], bool]:
        self._due = self._index_due = None
        if not self._pending():
            return [], StatefulLogic.RETAIN
        out = self.refresh()
        self._last_s = out.seconds
        return [out], StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[Refresh], bool]:
        return self._due_now(datetime.now(UTC))

    def on_eof(self) -> tuple[list[Refresh], bool]:
        return self._recompute()

    def notify_at(self) -> datetime | None:
        due = [
            *([self._due] if self._due is not None and self._pending() else []),
            *([self._index_due] if self._index_due is not None and self._index_pending() else []),
        ]
        return min(due) if due else None

    def snapshot(self) -> CoClickState | None:
        return copy.deepcopy(self.state) if self.recoverable else None


def build_flow(
    source: Source[RawBatch],
    sink: Sink[Refresh],
    dlq: DynamicSink,
    config: CoClickConfig = DEFAULT_COCLICK,
    limits: EventLimits = DEFAULT_LIMITS,
    recoverable: bool = True,
) -> Dataflow:
    """Build the co-click dataflow.

    Args:
        source: raw Kafka batches (`KafkaBatchSource` or a `TestingSource` of `RawBatch`).
        sink: receives `Refresh` updates (a `NeighbourSink` in production).
        dlq: receives dead letters (undecodable, duplicate, ...).
        config: job settings.
        limits: event decoding limits.
        recoverable: snapshot the state each epoch (off only when running without recovery).
    """
    flow, parts = ingest_flow(
        FLOW, source, dlq, limits=limits, lateness_ms=None, shard=part_of, dedupe=True,
        recoverable=recoverable,
    )  # fmt: skip
    refreshed = op.stateful(
        "coclick",
        parts,
        lambda resume: CoClickLogic(
            resume or CoClickState(ClickGraph(config.user_window)), config, recoverable
        ),
    )
    op.output("neighbours", op.key_rm("refreshes", refreshed), sink)
    return flow


class _NeighbourPartition(StatelessSinkPartition[Refresh]):
    def __init__(self, redis_url: str, project: str, per_author: int) -> None:
        self._redis = connect(redis_url)
        self._store = NeighbourStore(self._redis, project)
        self._per_author = per_author

    def write_batch(self, items: list[Refresh]) -> None:
        for item in items:  # whole lists and set members: writing one again is harmless
            with_retry(
                lambda item=item: self._store.write(
                    item.rows, item.authors, self._per_author, item.fresh, item.stale, item.hwm
                ),
                "neighbour sink",
            )

    def close(self) -> None:
        self._redis.close()


class NeighbourSink(DynamicSink[Refresh]):
    """Writes each `Refresh` into Redis (`features.neighbours.NeighbourStore`).

    Args:
        redis_url: the Redis of the online store.
        project: the Feast project (the keys' prefix).
        per_author: newest notes kept per author.
    """

    def __init__(self, redis_url: str, project: str, per_author: int) -> None:
        self._args = (redis_url, project, per_author)

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _NeighbourPartition:
        del step_id, worker_index, worker_count
        return _NeighbourPartition(*self._args)
