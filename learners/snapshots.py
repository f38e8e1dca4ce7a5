"""Versioned embedding snapshots: atomic publishing (full + delta), verified reading, announcing.

Layout, one directory per model and version (see docs/snapshots.md):

    <root>/<model>/<version:010d>/
        tables.safetensors   embedding tables, one tensor per table: (rows, dim) float32
        ids.json             row ids per table, aligned with the tensor rows (the ID maps)
        dense.safetensors    dense parameters (full snapshots only)
        train_state.safetensors  optimiser and training-only state (full snapshots only)
        *.onnx, ...          exported graphs (`Exports`, full snapshots only)
        manifest.json        `Manifest`, with the sha256 and size of every other file and
                             the dtype, shape and meaning of every tensor

A version is written into `<root>/<model>/.tmp-*` beside it, every file and the directory are
fsynced, and the directory is renamed into place: it appears whole or not at all. Writers take an
exclusive lock on `<root>/<model>/.lock` for a publish, so numbers stay strictly increasing across
restarts and concurrent writers; leftover temp directories of killed writers are removed by the
next publish. Deltas hold only changed rows; a delta chains on the version before it (its
`parent_version`) and applies to the latest full (its `base_version`).

The root may also be an fsspec URL of an object store (`s3://bucket/prefix`,
`SnapshotConfig.url`), which every replica on every host can read. An object store has no
rename: a version's files are written in place and its manifest last, and readers list a
version only once its manifest is there (an object appears whole; S3 reads after writes are
consistent), so a version still appears whole or not at all. It has no lock either: one writer
per model (the learner) publishes there. Pruning deletes a version's manifest first.
"""

from __future__ import annotations

import fcntl
import fnmatch
import hashlib
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from features.paths import object_store
from learners.errors import (
    SnapshotConflictError,
    SnapshotCorruptError,
    SnapshotError,
    SnapshotNotFoundError,
    SnapshotPublishError,
    SnapshotRootNotWritableError,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""2: training state in its own file, extra files (ONNX) and the tensor schema; 1 is read too."""
MANIFEST = "manifest.json"
TABLES = "tables.safetensors"
IDS = "ids.json"
DENSE = "dense.safetensors"
TRAIN_STATE = "train_state.safetensors"
TRAIN_STATE_PREFIXES = ("accum.", "last_seen.", "freq.")
"""Dense arrays named so are training state, not model: stored in `TRAIN_STATE` (a snapshot of
format 1 kept them in `DENSE`; readers merge both into `Snapshot.dense` either way)."""
TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
LOCK = ".lock"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_FIX = (
    "this version is unusable: delete its directory (published versions are never rewritten) "
    "and publish a new full snapshot (`streamrec learn full`)"
)


class SnapshotConfig(BaseModel):
    """Where snapshots go, how many are kept, and how often the learner publishes them."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    root: Path
    """Snapshot root directory: `<root>/<model>/<version>/` (the settings default it to
    `<data_dir>/snapshots`)."""
    url: str | None = None
    """fsspec URL of a snapshot store every host can reach, used instead of `root`
    (`s3://bucket/prefix`; credentials and endpoint from the standard AWS environment:
    `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`). None: `root`."""
    keep_full: int = Field(default=3, ge=1)
    """Full snapshots kept per model; older fulls and their deltas are pruned on a full publish."""
    full_every_s: float = Field(default=3600.0, gt=0)
    """Seconds between full snapshots published by the online learner."""
    delta_every_s: float = Field(default=1.0, gt=0)
    """Seconds between delta snapshots (changed rows only) published by the online learner
    (1 s keeps event -> delta p99 under 5 s; its cost in bytes and swaps: docs/benchmarks.md)."""
    inline_max_bytes: int = Field(default=900_000, ge=0, le=1_000_000)
    """A delta whose announcement (manifest + files) fits in this many bytes is carried in it,
    so replicas apply it without reading the store; larger ones are announced by reference.
    At most 1,000,000: a Kafka broker's default `message.max.bytes` is 1,048,588 and a
    producer's 1,000,000, record overhead included. 0: never."""

    @property
    def location(self) -> str:
        """Where the snapshots are: `url`, else `root` (what readers and writers take)."""
        return self.url or str(self.root)


@dataclass(frozen=True)
class TableRows:
    """Rows of one embedding table."""

    ids: list[str]
    """Row ids, aligned with `weights`."""
    weights: np.ndarray
    """(len(ids), dim) float32."""


@dataclass(frozen=True)
class Manifest:
    """A parsed `manifest.json`: what one version holds and how to verify it."""

    model: str
    version: int
    kind: str
    """"full" or "delta"."""
    base_version: int | None
    """For deltas: the full snapshot they apply to; None for fulls."""
    created_at_ms: int
    """Wall time of publishing, epoch ms."""
    hwm_ms: int
    """Event-time high-water mark of the data the version was trained on, epoch ms."""
    rows: dict[str, int]
    """Table -> row count in this version (changed rows only, for deltas)."""
    files: dict[str, str]
    """File name -> sha256 hex digest, for every file of the version but the manifest."""
    meta: dict
    """JSON-able model hyperparameters etc. (a delta without its own inherits its base's)."""
    parent_version: int | None = None
    """For deltas: the version this delta follows (its base or the previous delta)."""
    dims: dict[str, int] = field(default_factory=dict)
    """Table -> embedding dimension."""
    sizes: dict[str, int] = field(default_factory=dict)
    """File name -> size in bytes (a cheap check for truncation when listing)."""
    format_version: int = FORMAT_VERSION
    """Layout version of this manifest."""
    tensors: dict[str, dict[str, dict]] = field(default_factory=dict)
    """File -> tensor name -> {"dtype", "shape", "doc"}: every tensor of the version."""
    schema: dict = field(default_factory=dict)
    """What a consumer needs to use the tensors and graphs (architecture, ONNX inputs and
    outputs, row 0, bucketing): the `Exports.schema` of the full (deltas repeat their base's)."""


@dataclass(frozen=True)
class Publication:
    """A version as its writer just published it: what an announcer may carry to consumers."""

    manifest: Manifest
    files: dict[str, bytes]
    """Every file of the version but the manifest, by name (verified by `manifest.files`)."""
    location: str
    """Where the version is: its directory, or its URL on an object store."""


@dataclass(frozen=True)
class Exports:
    """What a full snapshot carries for consumers beyond its tables and dense parameters."""

    files: dict[str, bytes] = field(default_factory=dict)
    """Extra files of the version by name (e.g. ONNX graphs), verified like the others."""
    schema: dict = field(default_factory=dict)
    """JSON-able description for the manifest's `schema`; its `tensor_docs` (tensor name or
    fnmatch pattern -> meaning) documents the tensors in `Manifest.tensors`."""


@dataclass(frozen=True)
class Snapshot:
    """The consistent state a consumer uses."""

    manifest: Manifest
    """Manifest of the newest version included."""
    tables: dict[str, TableRows]
    """Full snapshot with all its deltas up to `manifest.version` applied, in order."""
    dense: dict[str, np.ndarray]
    """Dense parameters (from the full snapshot)."""
    versions: tuple[int, ...] = ()
    """Versions applied, oldest first: the full, then its deltas."""
    delta_metas: tuple[dict, ...] = ()
    """The `meta` of every delta applied, oldest first (what a delta adds beyond rows)."""


def encode_manifest(manifest: Manifest) -> bytes:
    """Return the manifest as JSON (the `manifest.json` content and the announcement payload)."""
    return msgspec.json.encode(manifest)


def decode_announcement(raw: bytes) -> Manifest:
    """Parse an announcement from `embedding-snapshots` (the JSON of a manifest).

    Raises:
        SnapshotError: `raw` is not a manifest; the message names the offending field.
    """
    try:
        manifest = msgspec.json.decode(raw, type=Manifest)
        _check_kind(manifest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise SnapshotError(f"not a snapshot announcement: {exc}") from exc
    return manifest


def _check_kind(manifest: Manifest) -> None:
    if manifest.kind not in ("full", "delta"):
        raise msgspec.ValidationError(f"kind must be 'full' or 'delta', not {manifest.kind!r}")
    if (manifest.kind == "delta") != (manifest.base_version is not None):
        raise msgspec.ValidationError("base_version must be set for deltas and only for them")


def _version_dir_name(version: int) -> str:
    return f"{version:010d}"


def _check_model_name(model: str) -> None:
    if not _MODEL_NAME.fullmatch(model):
        raise SnapshotError(
            f"model name {model!r} is not usable as a directory name: use letters, digits, "
            "'_', '-' and '.', starting with a letter or digit"
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _encode_ids(tables: dict[str, TableRows]) -> bytes:
    return msgspec.json.encode({name: list(t.ids) for name, t in tables.items()})


def _check_tables(tables: dict[str, TableRows], dims: dict[str, int]) -> None:
    """Raise `SnapshotError` naming the table if its rows are not publishable."""
    for name, table in tables.items():
        w = table.weights
        if not isinstance(w, np.ndarray) or w.dtype != np.float32 or w.ndim != 2:
            raise SnapshotError(
                f"table {name!r}: weights must be a 2-d float32 numpy array, got "
                f"{getattr(w, 'dtype', type(w).__name__)} with shape {getattr(w, 'shape', '?')}"
            )
        if w.shape[0] != len(table.ids):
            raise SnapshotError(
                f"table {name!r}: {len(table.ids)} ids but {w.shape[0]} weight rows; "
                "they must be aligned"
            )
        if not all(issubclass(kind, str) for kind in set(map(type, table.ids))):
            raise SnapshotError(f"table {name!r}: row ids must be strings")
        if len(set(table.ids)) != len(table.ids):
            raise SnapshotError(f"table {name!r}: row ids must be unique within one snapshot")
        if name in dims and dims[name] != w.shape[1]:
            raise SnapshotError(
                f"table {name!r}: dimension {w.shape[1]} differs from the base full snapshot's "
                f"{dims[name]}; publish a full snapshot when a dimension changes"
            )


class _Scan:
    """What a model directory holds: valid manifests and broken versions, by version."""

    def __init__(self) -> None:
        self.valid: dict[int, Manifest] = {}
        self.broken: dict[int, SnapshotCorruptError] = {}

    @property
    def newest(self) -> int | None:
        """Highest version number present, valid or not."""
        return max([*self.valid, *self.broken], default=None)

    def fulls(self) -> list[Manifest]:
        """Valid full snapshots, newest first."""
        return sorted(
            (m for m in self.valid.values() if m.kind == "full"), key=lambda m: -m.version
        )

    def deltas_of(self, base: int) -> list[Manifest]:
        """Valid deltas on `base`, oldest first."""
        return sorted(
            (m for m in self.valid.values() if m.base_version == base), key=lambda m: m.version
        )


class _Store:
    """Reads the model directory; manifests of published versions are immutable, so cached.

    A local root is a directory (`self.fs` None); a URL root an object store (`self.fs`).
    """

    def __init__(self, root: Path | str, model: str) -> None:
        _check_model_name(model)
        self.model = model
        self.fs, base = object_store(root)
        self.url = str(root)
        self.dir: Path = Path(base) / model
        self._manifests: dict[int, Manifest] = {}

    @property
    def where(self) -> str:
        """The model directory as the user named it (path or URL)."""
        return str(self.dir) if self.fs is None else f"{self.url.rstrip('/')}/{self.model}"

    def version_dir(self, version: int) -> Path:
        return self.dir / _version_dir_name(version)

    def _listing(self) -> dict[int, dict[str, int]]:
        """Version -> {file name: size} of every version directory there now."""
        if self.fs is not None:
            self.fs.invalidate_cache(str(self.dir))
            try:
                found = self.fs.find(str(self.dir), detail=True)
            except FileNotFoundError:
                return {}
            listing: dict[int, dict[str, int]] = {}
            prefix = f"{str(self.dir).strip('/')}/"
            for path, info in found.items():
                parts = path.strip("/").removeprefix(prefix).split("/")
                if len(parts) == 2 and parts[0].isdigit():
                    listing.setdefault(int(parts[0]), {})[parts[1]] = int(info["size"])
            # no rename on an object store: a version is there once its manifest is
            return {v: files for v, files in listing.items() if MANIFEST in files}
        try:
            entries = [e for e in os.scandir(self.dir) if e.name.isdigit() and e.is_dir()]
        except FileNotFoundError:
            return {}
        listing = {}
        for entry in entries:
            try:
                listing[int(entry.name)] = {
                    f.name: f.stat().st_size for f in os.scandir(entry.path) if f.is_file()
                }
            except FileNotFoundError:
                continue  # pruned while we looked
        return listing

    def read_file(self, version: int, name: str) -> bytes:
        """The bytes of one file of a version (FileNotFoundError if it is not there)."""
        path = self.version_dir(version) / name
        if self.fs is not None:
            return self.fs.cat_file(str(path))
        return path.read_bytes()

    def version_exists(self, version: int) -> bool:
        """Whether the version is still there (not pruned)."""
        if self.fs is not None:
            return self.fs.exists(str(self.version_dir(version) / MANIFEST))
        return self.version_dir(version).exists()

    def corrupt(self, version: int, file: str | None, detail: str) -> SnapshotCorruptError:
        return SnapshotCorruptError(self.model, version, file, detail, _FIX)

    def scan(self) -> _Scan:
        scan = _Scan()
        listing = self._listing()
        present = set(listing)
        for version, files in listing.items():
            try:
                scan.valid[version] = self._check_complete(version, files)
            except SnapshotCorruptError as exc:
                if self.version_exists(version):  # else pruned while we looked
                    scan.broken[version] = exc
        for gone in set(self._manifests) - present:
            del self._manifests[gone]
        for version, manifest in list(scan.valid.items()):
            if manifest.base_version is not None and manifest.base_version not in scan.valid:
                del scan.valid[version]
                state = "unusable" if manifest.base_version in scan.broken else "missing"
                scan.broken[version] = self.corrupt(
                    version, None, f"its base, full version {manifest.base_version}, is {state}"
                )
        return scan

    def _check_complete(self, version: int, files: dict[str, int]) -> Manifest:
        manifest = self._manifests.get(version) or self._read_manifest(version)
        for name in manifest.files:
            size = files.get(name)
            if size is None:
                raise self.corrupt(version, name, "is missing")
            if name in manifest.sizes and size != manifest.sizes[name]:
                raise self.corrupt(
                    version, name, f"is {size} bytes, the manifest says {manifest.sizes[name]}"
                )
        self._manifests[version] = manifest
        return manifest

    def _read_manifest(self, version: int) -> Manifest:
        try:
            raw = self.read_file(version, MANIFEST)
        except FileNotFoundError:
            raise self.corrupt(
                version, MANIFEST, "is missing (partial or damaged version)"
            ) from None
        try:
            manifest = msgspec.json.decode(raw, type=Manifest)
            _check_kind(manifest)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise self.corrupt(version, MANIFEST, f"is not a valid manifest ({exc})") from None
        if manifest.version != version or manifest.model != self.model:
            raise self.corrupt(
                version,
                MANIFEST,
                f"describes {manifest.model!r} version {manifest.version}, not this directory",
            )
        return manifest

    def read_verified(self, manifest: Manifest, name: str) -> bytes:
        """Return the bytes of one file of a version after checking its sha256."""
        try:
            data = self.read_file(manifest.version, name)
        except FileNotFoundError:
            if not self.version_exists(manifest.version):
                raise SnapshotNotFoundError(
                    f"snapshot {self.model!r} version {manifest.version} was pruned while being "
                    "read: read the latest version again"
                ) from None
            raise self.corrupt(manifest.version, name, "is missing") from None
        if hashlib.sha256(data).hexdigest() != manifest.files[name]:
            raise self.corrupt(
                manifest.version,
                name,
                f"sha256 does not match the manifest ({len(data)} bytes read): the file is "
                "truncated, damaged or was modified",
            )
        return data

    def read_tensors(self, manifest: Manifest, name: str) -> dict[str, np.ndarray]:
        data = self.read_verified(manifest, name)
        try:
            return st_load(data)
        except SafetensorError as exc:
            raise self.corrupt(
                manifest.version, name, f"is not a safetensors file ({exc})"
            ) from exc

    def read_tables(self, manifest: Manifest) -> dict[str, TableRows]:
        return _decode_tables(
            manifest,
            self.read_verified(manifest, TABLES),
            self.read_verified(manifest, IDS),
            self.corrupt,
        )


def _decode_tables(
    manifest: Manifest,
    tables: bytes,
    ids: bytes,
    corrupt: Callable[[int, str | None, str], SnapshotCorruptError],
) -> dict[str, TableRows]:
    """The rows of a version from its verified `TABLES` and `IDS` bytes, checked against its
    manifest (`corrupt(version, file, detail)` makes the error raised)."""
    try:
        weights = st_load(tables)
    except SafetensorError as exc:
        raise corrupt(manifest.version, TABLES, f"is not a safetensors file ({exc})") from exc
    try:
        names = msgspec.json.decode(ids, type=dict[str, list[str]])
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise corrupt(manifest.version, IDS, f"is not an id map ({exc})") from exc
    if set(weights) != set(manifest.rows) or set(names) != set(manifest.rows):
        raise corrupt(manifest.version, TABLES, "tables differ from the manifest's")
    for name, rows in manifest.rows.items():
        if weights[name].shape[0] != rows or len(names[name]) != rows:
            raise corrupt(manifest.version, TABLES, f"table {name!r} does not have {rows} rows")
    return {name: TableRows(names[name], weights[name]) for name in manifest.rows}


def delta_follows(current: Snapshot, manifest: Manifest) -> bool:
    """Whether `manifest` is the delta right after `current` (same model, same full, its parent
    is `current`'s version): the only delta `apply_delta` applies to it."""
    return (
        manifest.kind == "delta"
        and manifest.model == current.manifest.model
        and current.versions[:1] == (manifest.base_version,)
        and manifest.parent_version == current.manifest.version
    )


def apply_delta(current: Snapshot, manifest: Manifest, files: dict[str, bytes]) -> Snapshot:
    """Return `current` with the delta `manifest` applied from its files' bytes (e.g. carried in
    its announcement), without reading the store: the state `SnapshotReader.refresh` would
    return. `current` is not modified.

    Raises:
        SnapshotConflictError: the delta does not follow `current` (`delta_follows`): read the
            store instead (`SnapshotReader.refresh`).
        SnapshotCorruptError: a file is missing or its sha256 differs from the manifest's.
    """
    if not delta_follows(current, manifest):
        raise SnapshotConflictError(
            f"delta {manifest.model!r} version {manifest.version} (full {manifest.base_version}, "
            f"after {manifest.parent_version}) does not follow the state held "
            f"({current.manifest.model!r} versions {list(current.versions)}): refresh from the "
            "store"
        )

    def corrupt(version: int, file: str | None, detail: str) -> SnapshotCorruptError:
        return SnapshotCorruptError(
            manifest.model,
            version,
            file,
            f"{detail} (as carried in its announcement)",
            "read the version from the store instead (`SnapshotReader.refresh`)",
        )

    for name in (TABLES, IDS):
        data = files.get(name)
        if data is None:
            raise corrupt(manifest.version, name, "is missing")
        if hashlib.sha256(data).hexdigest() != manifest.files.get(name):
            raise corrupt(manifest.version, name, "sha256 does not match the manifest")
    rows = _decode_tables(manifest, files[TABLES], files[IDS], corrupt)
    tables = current.tables
    merged = {
        name: _apply_deltas(tables.get(name), [rows[name]] if name in rows else [], owned=False)
        for name in [*tables, *(n for n in rows if n not in tables)]
    }
    return Snapshot(
        manifest,
        merged,
        current.dense,
        (*current.versions, manifest.version),
        (*current.delta_metas, manifest.meta),
    )


def _apply_deltas(full: TableRows | None, deltas: list[TableRows], owned: bool) -> TableRows:
    """Return `full` with the delta rows applied in order: later rows win, new ids appended.

    Args:
        owned: `full.weights` belongs to the caller alone and may be updated in place.
    """
    if not deltas:
        assert full is not None
        return full
    ids = [i for d in deltas for i in d.ids]
    stacked = np.concatenate([d.weights for d in deltas])  # (sum of delta rows, dim)
    # first-seen order of ids, each mapped to its LAST row (dict keeps the first insertion slot)
    last = dict(zip(ids, range(len(ids)), strict=True))
    if full is None:
        rows = np.fromiter(last.values(), dtype=np.int64, count=len(last))
        return TableRows(list(last), stacked[rows])
    hits = [(pos, last[i]) for pos, i in enumerate(full.ids) if i in last]
    new = dict(last)
    for pos, _ in hits:
        del new[full.ids[pos]]
    n_full, dim = full.weights.shape
    if owned and not new:
        weights = full.weights  # (n_full, dim), updated in place
    else:
        weights = np.empty((n_full + len(new), dim), np.float32)
        weights[:n_full] = full.weights  # (n_full, dim)
    if hits:
        at, src = np.asarray(hits, dtype=np.int64).T
        weights[at] = stacked[src]
    if new:
        weights[n_full:] = stacked[list(new.values())]  # (n_new, dim)
    return TableRows([*full.ids, *new] if new else full.ids, weights)


class SnapshotReader:
    """Lists, verifies and loads the published versions of one model.

    Args:
        root: the snapshot root (`SnapshotConfig.location`: a directory or an fsspec URL).
        model: the model's name (its directory under `root`).
        on_fallback: called with the error of every version `latest()` had to skip; the default
            logs a warning. Serving passes its own hook to count or alert.
    """

    def __init__(
        self,
        root: Path | str,
        model: str,
        on_fallback: Callable[[SnapshotCorruptError], None] | None = None,
    ) -> None:
        self._store = _Store(root, model)
        self._on_fallback = on_fallback or (lambda exc: logger.warning("%s", exc))

    @property
    def model(self) -> str:
        """The model read."""
        return self._store.model

    def versions(self) -> list[Manifest]:
        """Return the valid, complete versions, oldest first.

        Complete: the manifest parses and every file it lists is present with its size;
        checksums are verified when a version is loaded.
        """
        scan = self._store.scan()
        return [scan.valid[v] for v in sorted(scan.valid)]

    def problems(self) -> list[SnapshotCorruptError]:
        """Return why each version directory that `versions()` leaves out is unusable."""
        scan = self._store.scan()
        return [scan.broken[v] for v in sorted(scan.broken)]

    def manifest(self, version: int) -> Manifest:
        """Return the manifest of a complete version (checksums not verified)."""
        scan = self._store.scan()
        return self._manifest_in(scan, version)

    def _manifest_in(self, scan: _Scan, version: int) -> Manifest:
        if version in scan.broken:
            raise scan.broken[version]
        if version not in scan.valid:
            have = sorted(scan.valid)
            raise SnapshotNotFoundError(
                f"snapshot {self.model!r} has no version {version} under {self._store.where} "
                f"(it has {_ranges(have) if have else 'none'}); `streamrec snapshots list` "
                "shows what there is"
            )
        return scan.valid[version]

    def load(self, version: int) -> Snapshot:
        """Return the state as of `version` (its full plus its deltas up to it), verified.

        Raises:
            SnapshotNotFoundError: no such version.
            SnapshotCorruptError: the version, or one it needs, is partial or corrupt.
        """
        scan = self._store.scan()
        manifest = self._manifest_in(scan, version)
        base = manifest.version if manifest.kind == "full" else manifest.base_version
        assert base is not None
        chain = self._chain(scan, base, upto=version)
        if chain[-1].version != version:
            raise self._broken_link(scan, chain[-1].version, version)
        return self._build(chain, strict=True)

    def latest(self, strict: bool = False) -> Snapshot:
        """Return the newest consistent state: the newest full and every later delta on it.

        Temp directories of unfinished publishes are never seen. If the newest version (or a
        version it needs) is partial or corrupt: with `strict` raise `SnapshotCorruptError`;
        otherwise fall back to the newest consistent state (the newest full whose files verify,
        with its deltas up to the first unusable one), reporting every skipped version to
        `on_fallback`.

        Raises:
            SnapshotNotFoundError: the model has no version at all.
            SnapshotCorruptError: strict and the newest version is unusable, or no version is.
        """
        scan = self._store.scan()
        newest = scan.newest
        if newest is None:
            raise SnapshotNotFoundError(
                f"no snapshot of model {self.model!r} under {self._store.where}: publish one "
                "first (`streamrec learn full`)"
            )
        if strict:
            return self.load(newest)
        skipped: list[SnapshotCorruptError] = []
        for full in scan.fulls():
            chain = self._chain(scan, full.version, upto=None)
            try:
                snapshot = self._build(chain, strict=False, skipped=skipped)
            except SnapshotCorruptError as exc:  # the full itself is unusable
                skipped.append(exc)
                continue
            self._report_newer(scan, snapshot.manifest.version, skipped)
            for exc in skipped:
                self._on_fallback(exc)
            return snapshot
        problems = skipped or [scan.broken[v] for v in sorted(scan.broken)]
        raise SnapshotCorruptError(
            self.model,
            newest,
            None,
            "no full snapshot is usable" + (f" (first problem: {problems[0]})" if problems else ""),
            "publish a new full snapshot (`streamrec learn full`)",
        )

    def refresh(self, current: Snapshot) -> Snapshot:
        """Return the newest consistent state, reading only the deltas published since `current`.

        Falls back to `latest()` when a newer full exists or `current` is not on the chain of
        the newest full. `current` is not modified (its arrays may still be in use). Problems
        are reported to `on_fallback` as in `latest()`.
        """
        scan = self._store.scan()
        fulls = scan.fulls()
        if not current.versions or not fulls or fulls[0].version != current.versions[0]:
            return self.latest()
        chain = self._chain(scan, current.versions[0], upto=None)
        if current.manifest.version not in {m.version for m in chain}:
            return self.latest()
        skipped: list[SnapshotCorruptError] = []
        snapshot = self._build(chain, strict=False, skipped=skipped, start=current)
        self._report_newer(scan, snapshot.manifest.version, skipped)
        for exc in skipped:
            self._on_fallback(exc)
        return snapshot

    def _report_newer(self, scan: _Scan, used: int, skipped: list[SnapshotCorruptError]) -> None:
        """Add an error for every version newer than `used` that is not reported yet."""
        reported = {exc.version for exc in skipped}
        newer = sorted(v for v in [*scan.valid, *scan.broken] if v > used)
        for version in newer:
            if version in reported:
                continue
            if version in scan.broken:
                skipped.append(scan.broken[version])
            else:
                skipped.append(
                    self._store.corrupt(
                        version,
                        None,
                        f"skipped: a version it builds on (after {used}) is unusable",
                    )
                )
            reported.add(version)

    def _chain(self, scan: _Scan, base: int, upto: int | None) -> list[Manifest]:
        """The full `base` and its deltas, oldest first, up to `upto`, while the links hold."""
        chain = [scan.valid[base]]
        for delta in scan.deltas_of(base):
            if upto is not None and delta.version > upto:
                break
            if delta.parent_version not in (None, chain[-1].version):
                break
            chain.append(delta)
        return chain

    def _broken_link(self, scan: _Scan, last_good: int, wanted: int) -> SnapshotCorruptError:
        for version in range(last_good + 1, wanted):
            if version in scan.broken:
                return scan.broken[version]
        return self._store.corrupt(
            wanted,
            None,
            f"its chain of deltas breaks after version {last_good} (a delta is missing)",
        )

    def _build(
        self,
        chain: list[Manifest],
        strict: bool,
        skipped: list[SnapshotCorruptError] | None = None,
        start: Snapshot | None = None,
    ) -> Snapshot:
        """Load the full `chain[0]` (or take `start`) and apply the deltas of `chain` after it."""
        if start is None:
            tables = self._store.read_tables(chain[0])
            dense = self._store.read_tensors(chain[0], DENSE)
            if TRAIN_STATE in chain[0].files:
                dense = {**dense, **self._store.read_tensors(chain[0], TRAIN_STATE)}
            used, applied, metas = chain[0], [chain[0].version], []
        else:
            tables, dense = start.tables, start.dense
            used, applied = start.manifest, list(start.versions)
            metas = list(start.delta_metas)
        deltas: dict[str, list[TableRows]] = {}
        for delta in chain:
            if delta.version <= used.version:
                continue
            try:
                rows = self._store.read_tables(delta)
            except SnapshotCorruptError as exc:
                if strict or skipped is None:
                    raise
                skipped.append(exc)
                break
            for name, table in rows.items():
                deltas.setdefault(name, []).append(table)
            used = delta
            applied.append(delta.version)
            metas.append(delta.meta)
        merged = {
            name: _apply_deltas(tables.get(name), deltas.get(name, []), owned=start is None)
            for name in [*tables, *(n for n in deltas if n not in tables)]
        }
        return Snapshot(used, merged, dense, tuple(applied), tuple(metas))


def _ranges(versions: list[int]) -> str:
    return f"{versions[0]}..{versions[-1]}" if len(versions) > 1 else str(versions[0])


class SnapshotWriter:
    """Publishes full and delta snapshots of one model, atomically, and prunes old ones.

    Args:
        root: the snapshot root (normally `config.location`: a directory or an fsspec URL).
        model: the model's name (its directory under `root`).
        config: retention (`keep_full`) and publishing intervals.
        announce: called with every published version (its manifest, files and location; e.g.
            `learners.subscription.kafka_announcer`).
    """

    def __init__(
        self,
        root: Path | str,
        model: str,
        config: SnapshotConfig,
        announce: Callable[[Publication], None] | None = None,
    ) -> None:
        self._store = _Store(root, model)
        self._config = config
        self._announce = announce

    @property
    def model(self) -> str:
        """The model written."""
        return self._store.model

    def publish_full(
        self,
        tables: dict[str, TableRows],
        dense: dict[str, np.ndarray],
        hwm_ms: int,
        meta: dict,
        exports: Exports | None = None,
    ) -> Manifest:
        """Publish every row of every table plus the dense parameters as a new full version.

        Dense arrays named `TRAIN_STATE_PREFIXES` go to `train_state.safetensors`, the rest to
        `dense.safetensors`. Older fulls beyond `config.keep_full`, and their deltas, are pruned
        afterwards.

        Args:
            exports: extra files (ONNX graphs) and the schema documenting the version.
        """
        _check_tables(tables, {})
        exports = exports or Exports()
        reserved = {TABLES, IDS, DENSE, TRAIN_STATE, MANIFEST}
        if bad := sorted(set(exports.files) & reserved | {n for n in exports.files if "/" in n}):
            raise SnapshotError(f"export file names {bad} are reserved or not plain file names")
        model = {k: v for k, v in dense.items() if not k.startswith(TRAIN_STATE_PREFIXES)}
        train = {k: v for k, v in dense.items() if k.startswith(TRAIN_STATE_PREFIXES)}
        arrays = {
            TABLES: {n: t.weights for n, t in tables.items()},
            DENSE: _arrays(model),
            **({TRAIN_STATE: _arrays(train)} if train else {}),
        }
        with self._locked():
            scan = self._store.scan()
            version = (scan.newest or 0) + 1
            files = {
                TABLES: st_save(arrays[TABLES]),
                IDS: _encode_ids(tables),
                DENSE: _save_dense(arrays[DENSE]),
                **({TRAIN_STATE: _save_dense(train)} if train else {}),
                **exports.files,
            }
            manifest = self._publish(
                version, "full", None, None, tables, files, hwm_ms, meta,
                _describe(arrays, exports.schema), exports.schema,
            )  # fmt: skip
            self._prune(version)
        self._announced(manifest, files)
        return manifest

    def publish_delta(
        self,
        tables: dict[str, TableRows],
        hwm_ms: int,
        meta: dict | None = None,
        base_version: int | None = None,
    ) -> Manifest:
        """Publish the rows changed since the previous version as a delta on the latest full.

        Args:
            tables: only the changed rows (tables without changes may be left out).
            meta: None inherits the base full's meta.
            base_version: the full the caller's rows build on; if given and a newer full has
                been published meanwhile, raise `SnapshotConflictError` instead of publishing.
        """
        with self._locked():
            scan = self._store.scan()
            fulls = scan.fulls()
            if not fulls:
                raise SnapshotError(
                    f"model {self.model!r} has no full snapshot under {self._store.where}: "
                    "publish_full first (deltas apply to a full)"
                )
            base = fulls[0]
            if base_version is not None and base_version != base.version:
                raise SnapshotConflictError(
                    f"model {self.model!r}: the delta builds on full version {base_version} but "
                    f"full version {base.version} is newer; load it (SnapshotReader.latest()) "
                    "and publish deltas against it"
                )
            _check_tables(tables, base.dims)
            if scan.newest in scan.broken:
                logger.warning(
                    "%s; deltas published after it cannot be applied: publish a full snapshot",
                    scan.broken[scan.newest],
                )
            version = (scan.newest or 0) + 1
            weights = {n: t.weights for n, t in tables.items()}
            files = {TABLES: st_save(weights), IDS: _encode_ids(tables)}
            manifest = self._publish(
                version,
                "delta",
                base.version,
                scan.newest,
                tables,
                files,
                hwm_ms,
                base.meta if meta is None else meta,
                _describe({TABLES: weights}, base.schema),
                base.schema,
            )
        self._announced(manifest, files)
        return manifest

    def _announced(self, manifest: Manifest, files: dict[str, bytes]) -> None:
        if self._announce is not None:
            where = self._store.where
            location = f"{where}/{_version_dir_name(manifest.version)}"
            self._announce(Publication(manifest, files, location))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the model's writer lock; remove what killed writers left behind.

        An object store has no lock: one writer per model publishes there.
        """
        if self._store.fs is not None:
            yield
            return
        self._store.dir.mkdir(parents=True, exist_ok=True)
        with open(self._store.dir / LOCK, "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                for entry in os.scandir(self._store.dir):
                    if entry.name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
                        shutil.rmtree(entry.path, ignore_errors=True)
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _publish(
        self,
        version: int,
        kind: str,
        base: int | None,
        parent: int | None,
        tables: dict[str, TableRows],
        files: dict[str, bytes],
        hwm_ms: int,
        meta: dict,
        tensors: dict[str, dict[str, dict]],
        schema: dict,
    ) -> Manifest:
        manifest = Manifest(
            model=self.model,
            version=version,
            kind=kind,
            base_version=base,
            created_at_ms=int(time.time() * 1000),
            hwm_ms=int(hwm_ms),
            rows={n: len(t.ids) for n, t in tables.items()},
            files={name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
            meta=meta,
            parent_version=parent if kind == "delta" else None,
            dims={n: int(t.weights.shape[1]) for n, t in tables.items()},
            sizes={name: len(data) for name, data in files.items()},
            tensors=tensors,
            schema=schema,
        )
        try:
            manifest_json = msgspec.json.format(encode_manifest(manifest), indent=2)
        except (TypeError, msgspec.EncodeError) as exc:
            raise SnapshotError(f"meta must be JSON-able (str keys, plain values): {exc}") from exc
        if self._store.fs is not None:
            self._put(version, files, manifest_json)
            return manifest
        temp = self._store.dir / f"{TEMP_PREFIX}{_version_dir_name(version)}-{uuid.uuid4().hex}"
        temp.mkdir()
        try:
            for name, data in files.items():
                _write_synced(temp / name, data)
            _write_synced(temp / MANIFEST, manifest_json)
            _fsync_dir(temp)
            os.rename(temp, self._store.version_dir(version))
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        _fsync_dir(self._store.dir)
        return manifest

    def _put(self, version: int, files: dict[str, bytes], manifest_json: bytes) -> None:
        """Write a version to an object store: its files, then its manifest (what publishes it).

        Raises:
            SnapshotConflictError: another writer published this version meanwhile.
        """
        fs, vdir = self._store.fs, self._store.version_dir(version)
        assert fs is not None
        if fs.exists(str(vdir / MANIFEST)):
            raise SnapshotConflictError(
                f"model {self.model!r} version {version} was published by another writer under "
                f"{self._store.where}: run one learner per model on an object store"
            )
        for name, data in files.items():
            fs.pipe_file(str(vdir / name), data)
        fs.pipe_file(str(vdir / MANIFEST), manifest_json)

    def _prune(self, newest_full: int) -> None:
        """Remove versions older than the oldest of the `keep_full` newest fulls."""
        scan = self._store.scan()
        kept = [m.version for m in scan.fulls() if m.version <= newest_full]
        kept = kept[: self._config.keep_full]
        oldest = min(kept)
        doomed = [v for v in [*scan.valid, *scan.broken] if v < oldest]
        # newest first, so that a writer killed amid pruning leaves a full with a prefix of its
        # deltas, never a delta without its full; each is renamed first so that readers see
        # it vanish whole
        for version in sorted(doomed, reverse=True):
            if self._store.fs is not None:  # the manifest first: the version vanishes whole
                vdir = str(self._store.version_dir(version))
                with suppress(FileNotFoundError):
                    self._store.fs.rm_file(f"{vdir}/{MANIFEST}")
                self._store.fs.rm(vdir, recursive=True)
                continue
            trash = self._store.dir / f"{TRASH_PREFIX}{_version_dir_name(version)}"
            os.rename(self._store.version_dir(version), trash)
            shutil.rmtree(trash)
        if doomed and self._store.fs is None:
            _fsync_dir(self._store.dir)
            logger.info("pruned %s versions of %s older than %d", len(doomed), self.model, oldest)


def list_models(root: Path | str) -> list[str]:
    """The names of the models with a directory under the snapshot root (a path or a URL)."""
    fs, base = object_store(root)
    if fs is None:
        path = Path(base)
        if not path.is_dir():
            return []
        return sorted(
            p.name for p in path.iterdir() if p.is_dir() and _MODEL_NAME.fullmatch(p.name)
        )
    fs.invalidate_cache(base)
    try:
        entries = fs.ls(base, detail=True)
    except FileNotFoundError:
        return []
    names = (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory")
    return sorted(n for n in names if _MODEL_NAME.fullmatch(n))


def publish_failed(model: str, root: Path | str, exc: OSError) -> SnapshotPublishError:
    """The error to raise when writing a version of `model` under `root` failed."""
    return SnapshotPublishError(
        f"publishing a version of {model!r} under {root} failed ({exc.strerror or exc}); "
        "nothing partial was left. Free space or fix permissions there and run again: a "
        "restarted learner resumes from the offsets both models have applied"
    )


def _free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on the filesystem of `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _not_writable(directory: Path, why: str) -> SnapshotRootNotWritableError:
    return SnapshotRootNotWritableError(
        f"snapshot directory {directory} is not writable ({why}): nothing was trained. Free "
        "space on its filesystem or make it writable by this user, or point `snapshots.root` "
        "at a writable directory, then run the command again"
    )


def check_writable(root: Path | str, models: Iterable[str] = ()) -> None:
    """Fail fast unless a learner could publish under `root` (call it before training).

    Creates `root` if missing, as a publish would, then in `root` and in every existing
    `<root>/<model>` directory creates a probe file, writes and fsyncs 4 KiB, removes it and
    fsyncs the directory. Finally the free space must cover the newest full version of every
    model in `models` (a full is written before older ones are pruned). Probe files are
    `.tmp-probe-*`: readers ignore them and a writer's next publish removes a leftover.

    On an object store (a URL root) it writes and deletes one probe object under the root (an
    object store reports no free space).

    Raises:
        SnapshotRootNotWritableError: naming the directory, the reason and what to do.
    """
    fs, base = object_store(root)
    if fs is not None:
        probe = f"{base}/{TEMP_PREFIX}probe-{uuid.uuid4().hex}"
        try:
            fs.pipe_file(probe, bytes(4096))
            fs.rm_file(probe)
        except OSError as exc:
            raise _not_writable(Path(base), exc.strerror or str(exc)) from exc
        return
    root = Path(base)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _not_writable(root, exc.strerror or str(exc)) from exc
    stores = [_Store(root, m) for m in models]
    for directory in [root, *(s.dir for s in stores if s.dir.exists())]:
        probe = directory / f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, bytes(4096))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.unlink(probe)
            _fsync_dir(directory)
        except OSError as exc:
            with suppress(OSError):
                probe.unlink()
            raise _not_writable(directory, exc.strerror or str(exc)) from exc
    need = 0
    for store in stores:
        fulls = store.scan().fulls() if store.dir.is_dir() else []
        need += sum(fulls[0].sizes.values()) if fulls else 0
    free = _free_bytes(root)
    if free < need:
        raise _not_writable(
            root,
            f"{free / 2**20:,.1f} MiB free, the next full snapshots of "
            f"{', '.join(map(repr, models))} need about {need / 2**20:,.1f} MiB",
        )


def _arrays(dense: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Dense arrays as numpy (what `_save_dense` writes), for describing them."""
    return {name: np.asarray(a) for name, a in dense.items()}


def _describe(arrays: dict[str, dict[str, np.ndarray]], schema: dict) -> dict[str, dict[str, dict]]:
    """File -> tensor -> dtype, shape and the meaning `schema["tensor_docs"]` gives it."""
    docs: dict[str, str] = schema.get("tensor_docs", {})

    def doc(name: str) -> str:
        if name in docs:
            return docs[name]
        return next((d for p, d in docs.items() if fnmatch.fnmatchcase(name, p)), "")

    return {
        file: {
            name: {"dtype": str(a.dtype), "shape": list(a.shape), "doc": doc(name)}
            for name, a in tensors.items()
        }
        for file, tensors in arrays.items()
    }


def _save_dense(dense: dict[str, np.ndarray]) -> bytes:
    try:
        return st_save({name: np.ascontiguousarray(a) for name, a in dense.items()})
    except (SafetensorError, TypeError, ValueError) as exc:
        raise SnapshotError(f"dense parameters must be numpy arrays: {exc}") from exc


__all__ = [
    "Exports",
    "Manifest",
    "Publication",
    "Snapshot",
    "SnapshotConfig",
    "SnapshotReader",
    "SnapshotWriter",
    "TableRows",
    "apply_delta",
    "check_writable",
    "decode_announcement",
    "delta_follows",
    "encode_manifest",
    "list_models",
]
