"""The retrieval index: faiss over the item tower's unit note vectors (inner product = cosine).

Note ids (strings) map to int64 faiss ids. Kinds:

- "flat": `IndexIDMap2(IndexFlatIP)`, exact search; a delta is applied without a rebuild
  (`remove_ids` of the changed and dropped notes, `add_with_ids` of the new vectors).
- "ivf": `IndexIVFFlat` (inner product, k-means coarse quantizer trained at build time, about
  4 sqrt(n) lists, `nprobe` lists searched); deltas go in the same way, the quantizer is kept
  until the next full snapshot rebuilds the index.
- "hnsw": `IndexHNSWFlat` (inner product); faiss cannot remove vectors from it, so every
  version rebuilds it.

Updates are copy-on-write: `updated()` applies a delta to a clone, so the index a request is
reading is never mutated. `build_id` changes only when an index is built from scratch.
bench/serving.py measures the kinds (recall@100 against exact search, build and query time).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import faiss
import numpy as np

from serving.errors import RetrievalIndexError

KINDS = ("flat", "ivf", "hnsw")
_builds = itertools.count(1)


def _matrix(vectors: np.ndarray, n: int) -> np.ndarray:
    """`vectors` as a contiguous (n, d) float32 array."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    return v if v.ndim == 2 else v.reshape(n, -1)


class NoteIndex:
    """note_id -> vector index with string ids (mapped to int64 faiss ids).

    Args:
        dim: vector dimension.
        kind: "flat", "ivf" or "hnsw" (see the module docstring).
        nprobe: lists searched by "ivf".
        ef_search: candidate list size of "hnsw" searches.
        hnsw_m: graph degree of "hnsw".
    """

    def __init__(
        self,
        dim: int,
        kind: str = "flat",
        nprobe: int = 64,
        ef_search: int = 128,
        hnsw_m: int = 32,
    ) -> None:
        if kind not in KINDS:
            raise RetrievalIndexError(f"index kind must be one of {', '.join(KINDS)}, not {kind!r}")
        self.dim, self.kind = dim, kind
        self._params = {"nprobe": nprobe, "ef_search": ef_search, "hnsw_m": hnsw_m}
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        self._vectors: dict[int, np.ndarray] = {}
        self._index: faiss.Index | None = None
        self.build_id = next(_builds)
        """Changes when the index is built from scratch, not when a delta is applied."""

    def _empty(self, train: np.ndarray) -> faiss.Index:
        if self.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if self.kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(self.dim, self._params["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efSearch = self._params["ef_search"]
            return faiss.IndexIDMap2(hnsw)
        n = len(train)
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
        ivf = faiss.IndexIVFFlat(
            faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT
        )
        if n:
            size = min(n, max(nlist * 39, min(nlist * 256, 100_000)))
            sample = train[np.random.default_rng(0).permutation(n)[:size]]
            ivf.train(sample)  # (size, d)
        ivf.nprobe = min(self._params["nprobe"], nlist)
        return ivf

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        vectors: np.ndarray,
        kind: str = "flat",
        nprobe: int = 64,
        ef_search: int = 128,
        hnsw_m: int = 32,
    ) -> NoteIndex:
        """An index of `ids` with their (n, d) vectors, built from scratch."""
        vectors = _matrix(vectors, len(ids))
        index = cls(vectors.shape[1], kind, nprobe, ef_search, hnsw_m)
        index._index = index._empty(vectors)
        index._add(list(ids), vectors)
        return index

    def __len__(self) -> int:
        return 0 if self._index is None else self._index.ntotal

    def __contains__(self, note_id: str) -> bool:
        return note_id in self._ids and self._ids[note_id] in self._vectors

    def _fid(self, note_id: str) -> int:
        fid = self._ids.get(note_id)
        if fid is None:
            fid = self._ids[note_id] = len(self._names)
            self._names.append(note_id)
        return fid

    def _add(self, ids: list[str], vectors: np.ndarray) -> None:
        if vectors.shape[1] != self.dim:
            raise RetrievalIndexError(
                f"vectors have dimension {vectors.shape[1]}, the index {self.dim}: a retriever "
                "of another dimension needs a full snapshot (the index is rebuilt on fulls)"
            )
        if self._index is None:
            self._index = self._empty(vectors)
        if self.kind == "ivf" and not self._index.is_trained and len(vectors):
            self._index.train(vectors)  # (n, d): an index built empty trains on its first rows
        fids = np.fromiter((self._fid(i) for i in ids), dtype=np.int64, count=len(ids))
        if len(fids):
            self._index.add_with_ids(vectors, fids)  # (n, d), (n,)
            for f, v in zip(fids.tolist(), vectors, strict=True):
                self._vectors[f] = v

    def updated(
        self, ids: Sequence[str], vectors: np.ndarray, removed: Iterable[str] = ()
    ) -> NoteIndex:
        """A new index with `ids` added or replaced and `removed` dropped; this one is unchanged.

        "flat" and "ivf" apply the change to a clone of the faiss index (same `build_id`);
        "hnsw" is rebuilt.
        """
        vectors = _matrix(vectors, len(ids))
        gone = {n for n in removed if n in self} - set(ids)
        if self.kind == "hnsw":
            merged = {n: v for n, v in self.items() if n not in gone}
            merged.update(zip(ids, vectors, strict=True))
            names = list(merged)
            stacked = np.stack([merged[n] for n in names]) if names else vectors
            return NoteIndex.build(names, stacked, self.kind, **self._params)
        new = NoteIndex(self.dim, self.kind, **self._params)
        new.build_id = self.build_id
        new._ids, new._names = dict(self._ids), list(self._names)
        new._vectors = dict(self._vectors)
        new._index = None if self._index is None else faiss.clone_index(self._index)
        drop = [self._ids[n] for n in [*ids, *gone] if n in self]
        if drop:
            new._index.remove_ids(np.array(drop, dtype=np.int64))
            for f in drop:
                del new._vectors[f]
        new._add(list(ids), vectors)
        return new

    def tune(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Change the search effort ("ivf": lists probed, "hnsw": candidate list size)."""
        if nprobe is not None:
            self._params["nprobe"] = nprobe
            if self.kind == "ivf" and self._index is not None:
                self._index.nprobe = min(nprobe, self._index.nlist)
        if ef_search is not None:
            self._params["ef_search"] = ef_search
            if self.kind == "hnsw" and self._index is not None:
                faiss.downcast_index(self._index.index).hnsw.efSearch = ef_search

    def items(self) -> list[tuple[str, np.ndarray]]:
        """Every (note_id, vector) held."""
        return [(self._names[f], v) for f, v in self._vectors.items()]

    def search(self, query: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
        """The `k` notes of highest inner product with `query` (d,), best first, and scores."""
        if len(self) == 0:
            return [], np.zeros(0, np.float32)
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)  # (1, d)
        scores, fids = self._index.search(q, min(k, len(self)))  # (1, k), (1, k)
        keep = fids[0] >= 0
        return [self._names[f] for f in fids[0][keep].tolist()], scores[0][keep]
