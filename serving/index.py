"""The retrieval index: faiss over the item tower's unit note vectors (inner product = cosine).

"flat" is `IndexIDMap2(IndexFlatIP)`: exact, and a delta is applied in place (`remove_ids` of the
changed notes, `add_with_ids` of their new vectors) on a copy, so the version being read is never
mutated. "hnsw" (`IndexHNSWFlat`, inner product) cannot remove vectors and is rebuilt per version.
bench/serving.py measures both (recall@100 against exact search, query and build time).
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from serving.errors import ServingError


class NoteIndex:
    """note_id -> vector index with string ids (mapped to int64 faiss ids)."""

    def __init__(self, dim: int, kind: str = "flat", hnsw_m: int = 32) -> None:
        if kind not in ("flat", "hnsw"):
            raise ServingError(f"index kind must be 'flat' or 'hnsw', not {kind!r}")
        self.dim, self.kind, self._m = dim, kind, hnsw_m
        self._ids: dict[str, int] = {}
        self._names: list[str] = []
        self._vectors: dict[int, np.ndarray] = {}
        self._index = self._empty()

    def _empty(self) -> faiss.Index:
        if self.kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        hnsw = faiss.IndexHNSWFlat(self.dim, self._m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efSearch = 128
        return faiss.IndexIDMap2(hnsw)

    @classmethod
    def build(
        cls, ids: Sequence[str], vectors: np.ndarray, kind: str = "flat", hnsw_m: int = 32
    ) -> NoteIndex:
        """An index of `ids` with their (n, d) vectors."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        index = cls(vectors.shape[1], kind, hnsw_m)
        index._add(list(ids), vectors)
        return index

    def __len__(self) -> int:
        return self._index.ntotal

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
            raise ServingError(f"vectors have dimension {vectors.shape[1]}, the index {self.dim}")
        fids = np.fromiter((self._fid(i) for i in ids), dtype=np.int64, count=len(ids))
        if len(fids):
            self._index.add_with_ids(vectors, fids)  # (n, d), (n,)
            for f, v in zip(fids.tolist(), vectors, strict=True):
                self._vectors[f] = v

    def updated(self, ids: Sequence[str], vectors: np.ndarray) -> NoteIndex:
        """A new index with `ids` added or replaced; this one is left as it was."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), -1)
        if self.kind != "flat":
            merged = dict(self.items())
            merged.update(zip(ids, vectors, strict=True))
            names = list(merged)
            stacked = np.stack([merged[n] for n in names]) if names else vectors
            return NoteIndex.build(names, stacked, self.kind, self._m)
        new = NoteIndex(self.dim, self.kind, self._m)
        new._ids, new._names = dict(self._ids), list(self._names)
        new._vectors = dict(self._vectors)
        new._index = faiss.clone_index(self._index)
        known = [self._ids[i] for i in ids if i in self._ids and self._ids[i] in self._vectors]
        if known:
            new._index.remove_ids(np.array(known, dtype=np.int64))
        new._add(list(ids), vectors)
        return new

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
