"""Collisionless ID-embedding tables: admission, expiry, bounded memory, row-wise Adagrad.

As in ByteDance Monolith (Liu et al. 2022): every admitted ID owns a row (an id -> row map, no
hashing), a new ID gets its row only after it has been seen `admit_after` times (until then it
reads the shared default row 0), IDs not seen for `ttl_ms` of event time are expired, and the
table never holds more than `max_rows` rows (the least recently seen are evicted). Updates are
sparse: only the rows a batch touched are read and written, with row-wise Adagrad (one
accumulator per row, as FBGEMM's EXACT_ROWWISE_ADAGRAD). The rows written since the last
snapshot are tracked for delta snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from learners.config import EmbeddingConfig
from learners.errors import SampleInputError
from learners.snapshots import TableRows

DEFAULT_ID = ""
"""Row id of the shared default row in snapshots (IDs are never empty strings in tables)."""
_NEVER = np.iinfo(np.int64).min


@dataclass(frozen=True)
class TableStats:
    """Counters of one table."""

    rows: int
    """Admitted IDs (without the default row)."""
    pending: int
    """IDs seen but not yet admitted."""
    admitted: int
    """IDs admitted since creation."""
    expired: int
    """IDs expired by TTL since creation."""
    evicted: int
    """IDs evicted by the memory bound since creation."""


class EmbeddingTable:
    """One ID table; row 0 is the shared default row of unknown or not yet admitted IDs."""

    def __init__(self, name: str, config: EmbeddingConfig, seed: int = 0) -> None:
        self.name = name
        self.config = config
        self._gen = torch.Generator().manual_seed(seed)
        self.index: dict[str, int] = {}
        capacity = min(1024, config.max_rows) + 1
        self.weight = torch.empty(capacity, config.dim)  # (C, d)
        self.weight[0] = 0.0
        self.accum = torch.full((capacity,), config.initial_accumulator)  # (C,)
        self.last_seen = np.full(capacity, _NEVER, dtype=np.int64)
        self.row_ids: list[str | None] = [DEFAULT_ID] + [None] * (capacity - 1)
        self.dirty = np.zeros(capacity, dtype=bool)
        self._free: list[int] = list(range(capacity - 1, 0, -1))
        self._pending: dict[str, list[int]] = {}  # id -> [times seen, last seen ms]
        self._counts = {"admitted": 0, "expired": 0, "evicted": 0}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def capacity(self) -> int:
        """Allocated rows, default row included."""
        return self.weight.shape[0]

    def stats(self) -> TableStats:
        """Current counters."""
        return TableStats(len(self.index), len(self._pending), **self._counts)

    def rows(self, ids: list[str]) -> np.ndarray:
        """Rows of `ids` without recording anything (unknown -> default row 0), for scoring."""
        get = self.index.get
        return np.fromiter((get(i, 0) for i in ids), dtype=np.int64, count=len(ids))

    def observe(self, ids: list[str], ts: np.ndarray) -> np.ndarray:
        """Record that `ids` were seen at event times `ts`, admitting new IDs; return their rows.

        An ID seen for the `admit_after`-th time gets a fresh row (evicting the least recently
        seen rows when the table is full); before that its row is the default row 0.
        """
        if len(ids) != len(ts):
            raise SampleInputError(f"table {self.name!r}: {len(ids)} ids but {len(ts)} times")
        out = self.rows(ids)
        touched = out[out > 0]
        if touched.size:
            np.maximum.at(self.last_seen, touched, ts[out > 0])
        missing = np.flatnonzero(out == 0)
        if missing.size == 0:
            return out
        admit: dict[str, int] = {}
        k = self.config.admit_after
        for j in missing:
            key = ids[j]
            t = int(ts[j])
            if key == DEFAULT_ID:
                continue
            if key in admit:
                admit[key] = max(admit[key], t)
                continue
            seen = self._pending.get(key)
            if seen is None:
                seen = self._pending[key] = [0, t]
            seen[0] += 1
            seen[1] = max(seen[1], t)
            if seen[0] >= k:
                admit[key] = seen[1]
        if admit:
            for key in admit:
                self._pending.pop(key, None)
            self._admit(admit, protect=touched)
            get = self.index.get
            for j in missing:
                out[j] = get(ids[j], 0)
        return out

    def _admit(self, new: dict[str, int], protect: np.ndarray) -> None:
        need = len(new) - len(self._free)
        room = self.config.max_rows + 1 - self.capacity
        if need > 0 and room > 0:
            self._grow(min(room, max(need, self.capacity)))
            need = len(new) - len(self._free)
        if need > 0:
            self._evict(need, protect)
        rows = np.array([self._free.pop() for _ in range(min(len(new), len(self._free)))])
        keys = list(new)[: len(rows)]
        if len(rows) < len(new):  # more new ids in one batch than max_rows: keep the first
            self._counts["evicted"] += len(new) - len(rows)
        init = torch.randn(len(rows), self.config.dim, generator=self._gen) * self.config.init_std
        t_rows = torch.from_numpy(rows)
        self.weight[t_rows] = init
        self.accum[t_rows] = self.config.initial_accumulator
        for key, row in zip(keys, rows.tolist(), strict=True):
            self.index[key] = row
            self.row_ids[row] = key
            self.last_seen[row] = new[key]
        self.dirty[rows] = True
        self._counts["admitted"] += len(rows)

    def _grow(self, extra: int) -> None:
        old = self.capacity
        self.weight = torch.cat([self.weight, torch.zeros(extra, self.config.dim)])
        self.accum = torch.cat([self.accum, torch.full((extra,), self.config.initial_accumulator)])
        self.last_seen = np.concatenate([self.last_seen, np.full(extra, _NEVER, dtype=np.int64)])
        self.dirty = np.concatenate([self.dirty, np.zeros(extra, dtype=bool)])
        self.row_ids.extend([None] * extra)
        self._free.extend(range(old + extra - 1, old - 1, -1))

    def _evict(self, count: int, protect: np.ndarray) -> None:
        """Free the `count` least recently seen rows (never the default row or `protect`)."""
        age = self.last_seen.copy()
        age[0] = np.iinfo(np.int64).max
        age[protect] = np.iinfo(np.int64).max
        occupied = np.array([r is not None for r in self.row_ids])
        age[~occupied] = np.iinfo(np.int64).max
        candidates = int((age < np.iinfo(np.int64).max).sum())
        count = min(count, candidates)
        if count <= 0:
            return
        victims = np.argpartition(age, count - 1)[:count]
        self._release(victims)
        self._counts["evicted"] += count

    def _release(self, rows: np.ndarray) -> None:
        for row in rows.tolist():
            key = self.row_ids[row]
            if key is None or row == 0:
                continue
            del self.index[key]
            self.row_ids[row] = None
            self.last_seen[row] = _NEVER
            self.dirty[row] = False
            self._free.append(row)

    def expire(self, now_ms: int) -> int:
        """Free the rows (and forget the pending IDs) not seen since `now_ms - ttl_ms`."""
        cutoff = now_ms - self.config.ttl_ms
        stale = np.flatnonzero((self.last_seen < cutoff) & (self.last_seen != _NEVER))
        stale = stale[stale > 0]
        self._release(stale)
        self._counts["expired"] += len(stale)
        for key in [k for k, (_, t) in self._pending.items() if t < cutoff]:
            del self._pending[key]
        if len(self._pending) > self.config.max_rows:  # bound the pending counters as well
            keep = sorted(self._pending.items(), key=lambda kv: -kv[1][1])[: self.config.max_rows]
            self._pending = dict(keep)
        return len(stale)

    def lookup(self, rows: torch.Tensor) -> torch.Tensor:
        """Current vectors of `rows` (no gradient)."""
        return self.weight[rows]  # (B, d)

    def adagrad_step(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        """Row-wise Adagrad on unique `rows` (U,) with their gradients `grad` (U, d)."""
        g2 = grad.pow(2).mean(dim=1)  # (U,)
        acc = self.accum[rows] + g2  # (U,)
        self.accum[rows] = acc
        self.weight[rows] -= self.config.lr * grad / (acc.sqrt() + 1e-10).unsqueeze(1)  # (U, d)
        self.dirty[rows.numpy()] = True

    def export(self) -> tuple[TableRows, np.ndarray, np.ndarray]:
        """All rows (the default row first, id ""), with their accumulators and last-seen times."""
        rows = np.array([0, *self.index.values()], dtype=np.int64)
        ids = [DEFAULT_ID, *self.index.keys()]
        t_rows = torch.from_numpy(rows)
        weights = self.weight[t_rows].numpy().astype(np.float32, copy=False)
        return (
            TableRows(ids, np.ascontiguousarray(weights)),
            self.accum[t_rows].numpy().astype(np.float32),
            self.last_seen[rows],
        )

    def changed(self) -> TableRows:
        """Rows written since the last `clear_changed` (new, trained or re-initialised)."""
        rows = np.flatnonzero(self.dirty)
        ids = [self.row_ids[r] for r in rows.tolist()]
        weights = self.weight[torch.from_numpy(rows)].numpy().astype(np.float32, copy=True)
        return TableRows([i for i in ids if i is not None], weights.reshape(-1, self.config.dim))

    def clear_changed(self) -> None:
        """Forget which rows changed (call after publishing them)."""
        self.dirty[:] = False

    def load(
        self,
        table: TableRows,
        accum: np.ndarray | None = None,
        last_seen: np.ndarray | None = None,
        default_seen: int = 0,
    ) -> None:
        """Replace the content with `table` (a snapshot's rows; "" is the default row).

        `accum` / `last_seen` align with the first rows of `table` (a full snapshot's rows;
        rows its deltas appended get the initial accumulator and `default_seen`).
        """
        if table.weights.shape[1] != self.config.dim:
            raise SampleInputError(
                f"table {self.name!r}: snapshot rows have dimension {table.weights.shape[1]}, "
                f"the model {self.config.dim}: rebuild the model from the snapshot's meta"
            )
        n = len(table.ids)
        capacity = max(n + 1, min(1024, self.config.max_rows) + 1)
        self.weight = torch.zeros(capacity, self.config.dim)
        self.accum = torch.full((capacity,), self.config.initial_accumulator)
        self.last_seen = np.full(capacity, _NEVER, dtype=np.int64)
        self.dirty = np.zeros(capacity, dtype=bool)
        self.row_ids = [None] * capacity
        self.row_ids[0] = DEFAULT_ID
        self.index = {}
        self._pending = {}
        next_row = 1
        w = torch.from_numpy(np.array(table.weights, dtype=np.float32))
        for j, key in enumerate(table.ids):
            row = 0 if key == DEFAULT_ID else next_row
            if row:
                next_row += 1
                self.index[key] = row
                self.row_ids[row] = key
                known = last_seen is not None and j < len(last_seen)
                self.last_seen[row] = int(last_seen[j]) if known else default_seen
            self.weight[row] = w[j]
            if accum is not None and j < len(accum):
                self.accum[row] = float(accum[j])
        self._free = list(range(capacity - 1, next_row - 1, -1))


class IdEmbedding(torch.nn.Module):
    """Embedding lookup on an `EmbeddingTable` whose rows are trained sparsely.

    The table is not a module parameter: `model.parameters()` are the dense parameters only.
    `forward` makes the unique rows of the batch a leaf tensor; `sparse_step` applies Adagrad
    to exactly those rows after `backward`. The shared default row 0 (unknown, not yet admitted
    or absent IDs) is trained only while `train_default` is set: it is read by every such
    sample, so it is a dense parameter in disguise and stays frozen with them in online mode.

    ID dropout (full training only, while `train_default` is set): each sample reads the
    default row instead of its own with probability `dropout` (`set_dropout`). The default row
    thus keeps learning from a random share of every pass - it is what unseen and not yet
    admitted IDs read at serving time - and the dense layers cannot lean on memorised ID rows
    alone (the ID counterpart of feature dropout; cf. "DropoutNet", Volkovs et al., NeurIPS
    2017, which drops preference inputs to train for cold start).
    """

    def __init__(self, table: EmbeddingTable) -> None:
        super().__init__()
        self.table = table
        self.train_default = True
        self.dropout = 0.0
        self._gen = torch.Generator().manual_seed(0)
        self._parts: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows (U,), leaf (U, d))

    def set_dropout(self, p: float, seed: int) -> None:
        """Read the default row instead of a sample's own with probability `p` (full training)."""
        self.dropout = p
        self._gen = torch.Generator().manual_seed(seed)

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.table.config.dim

    def forward(self, rows: torch.Tensor, droppable: bool = True) -> torch.Tensor:
        """Vectors of `rows` (B,) -> (B, d); differentiable w.r.t. the rows when training.

        Every differentiable forward since the last `sparse_step` is kept, so a model may look a
        table up more than once per step (the gradients of a row are summed). `droppable`:
        ID dropout applies (the sample's own IDs); lookups of other items (a user's history)
        pass False.
        """
        if not torch.is_grad_enabled():
            return self.table.lookup(rows)  # (B, d)
        if droppable and self.train_default and self.dropout > 0:
            drop = torch.rand(rows.shape, generator=self._gen) < self.dropout  # (B,)
            rows = rows.masked_fill(drop, 0)  # (B,)
        uniq, inverse = torch.unique(rows, return_inverse=True)  # (U,), (B,)
        leaf = self.table.lookup(uniq).requires_grad_()  # (U, d)
        self._parts.append((uniq, leaf))
        return leaf[inverse]  # (B, d)

    def sparse_step(self, scale: float = 1.0) -> None:
        """Apply row-wise Adagrad to the rows of the forward passes since the last step.

        Args:
            scale: factor on the gradients; the models pass their batch size, so that a row
                gets the gradient of the summed per-sample losses (as in Monolith or FBGEMM)
                rather than of their mean, which would shrink its step with the batch size.
        """
        parts = [(r, leaf.grad) for r, leaf in self._parts if leaf.grad is not None]
        self._parts = []
        if not parts:
            return
        if len(parts) == 1:
            rows, grad = parts[0]
        else:
            rows, inverse = torch.unique(torch.cat([r for r, _ in parts]), return_inverse=True)
            grad = torch.zeros(len(rows), self.dim).index_add_(
                0, inverse, torch.cat([g for _, g in parts])
            )  # (U, d)
        grad = grad * scale  # (U, d)
        if not self.train_default:
            keep = rows > 0  # (U,)
            rows, grad = rows[keep], grad[keep]
        if rows.numel():
            self.table.adagrad_step(rows, grad)


class EmbeddingStore:
    """The ID tables of one model, by name."""

    def __init__(self, configs: dict[str, EmbeddingConfig], seed: int = 0) -> None:
        self.tables = {
            name: EmbeddingTable(name, cfg, seed=seed + i)
            for i, (name, cfg) in enumerate(configs.items())
        }

    def __getitem__(self, name: str) -> EmbeddingTable:
        return self.tables[name]

    def expire(self, now_ms: int) -> int:
        """Expire stale IDs in every table; return how many rows were freed."""
        return sum(t.expire(now_ms) for t in self.tables.values())

    def changed(self) -> dict[str, TableRows]:
        """Changed rows of every table that has any."""
        out = {name: t.changed() for name, t in self.tables.items()}
        return {name: rows for name, rows in out.items() if rows.ids}

    def clear_changed(self) -> None:
        """Forget the changed rows of every table."""
        for t in self.tables.values():
            t.clear_changed()

    def export(self) -> tuple[dict[str, TableRows], dict[str, np.ndarray]]:
        """Every table's rows, plus the `accum.<table>` / `last_seen.<table>` arrays."""
        tables: dict[str, TableRows] = {}
        extra: dict[str, np.ndarray] = {}
        for name, t in self.tables.items():
            tables[name], extra[f"accum.{name}"], extra[f"last_seen.{name}"] = t.export()
        return tables, extra

    def load(
        self, tables: dict[str, TableRows], extra: dict[str, np.ndarray], default_seen: int
    ) -> None:
        """Load every table from a snapshot (accumulators where they align with its rows)."""
        for name, t in self.tables.items():
            if name not in tables:
                raise SampleInputError(
                    f"the snapshot has no table {name!r}: publish one with `streamrec learn full`"
                )
            rows = tables[name]
            t.load(rows, extra.get(f"accum.{name}"), extra.get(f"last_seen.{name}"), default_seen)
