"""Follow published snapshots and swap consistent model views in without a gap.

A `ModelView` (ranker, retriever, retrieval index, versions) is built aside and replaced by one
reference assignment, so a request that took the view keeps a single consistent version to its
end. New versions are found by polling the snapshot store every `poll_interval_s`; an
announcement on `embedding-snapshots` (followed with `learners.subscription.Announcements`,
kafka-python) wakes the poll at once (announcements may be missed or arrive before the files
are visible: the store is the truth). A delta carried in its announcement that follows the
version served is applied from the record alone, without reading the store
(`learners.snapshots.apply_delta`); any other announcement (a full, a large delta, a gap) wakes
the poll. The models come from `learners.inference`, which does not load the training code.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from learners.errors import LearnersError, SnapshotError
from learners.inference import Ranker, Retriever
from learners.preranker import PreRanker
from learners.snapshots import (
    Snapshot,
    SnapshotNotFoundError,
    SnapshotReader,
    apply_delta,
    delta_follows,
)
from learners.subscription import Announcement, Announcements
from serving.config import ServingConfig
from serving.errors import NotReadyError
from serving.index import NoteIndex
from streams.config import Broker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelView:
    """One consistent state: both models and the index built from the retriever's version."""

    ranker: Ranker
    retriever: Retriever
    index: NoteIndex
    snapshots: dict[str, Snapshot]
    loaded_at: float
    """Wall-clock time (epoch s) the view went live."""
    preranker: PreRanker | None = None
    """The three-tower pre-ranker, None while it has no snapshot (or is not followed)."""

    @property
    def versions(self) -> dict[str, int]:
        """Model -> snapshot version in use."""
        return {k: s.manifest.version for k, s in self.snapshots.items()}


def _index_for(
    retriever: Retriever, previous: ModelView | None, snap: Snapshot, config: ServingConfig
) -> NoteIndex:
    """The index of `retriever`'s notes: a delta on the previous one if both share a full."""
    ids, vectors = retriever.item_vectors()
    same_full = previous is not None and (
        previous.snapshots["retriever"].versions[:1] == snap.versions[:1]
    )
    if not same_full or previous.index.dim != retriever.dim or previous.index.kind != config.index:
        return NoteIndex.build(
            ids, vectors, config.index, nprobe=config.nprobe, ef_search=config.ef_search
        )
    old_ids, old_vectors = previous.retriever.item_vectors()
    old_row = {n: j for j, n in enumerate(old_ids)}
    rows = np.array([old_row.get(n, -1) for n in ids], dtype=np.int64)
    changed = rows < 0
    known = np.flatnonzero(~changed)
    if len(known):
        diff = np.any(vectors[known] != old_vectors[rows[known]], axis=1)
        changed[known[diff]] = True
    pick = np.flatnonzero(changed)
    gone = set(old_ids).difference(ids)
    if not len(pick) and not gone:
        return previous.index
    return previous.index.updated([ids[j] for j in pick], vectors[pick], removed=gone)


class SnapshotWatcher:
    """Keeps the newest consistent `ModelView` of the ranker and retriever snapshots."""

    def __init__(
        self,
        root: Path | str,
        ranker_model: str,
        retriever_model: str,
        config: ServingConfig,
        preranker_model: str | None = None,
    ) -> None:
        self._root = root
        self._readers = {
            "ranker": SnapshotReader(root, ranker_model),
            "retriever": SnapshotReader(root, retriever_model),
        }
        self._optional = (
            {"preranker": SnapshotReader(root, preranker_model)} if preranker_model else {}
        )
        """Models the view goes live without while they have no snapshot (the pre-ranker)."""
        self._pinned: dict[tuple, tuple[float, ModelView]] = {}
        """Views an experiment arm pins (`pinned`), by what they pin: (made at, view)."""
        self._config = config
        self._view: ModelView | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.swaps = 0
        self.carried = 0
        """Deltas applied from their announcements (no store read)."""

    def current(self) -> ModelView:
        """The view to use for one request.

        Raises:
            NotReadyError: no snapshot of one of the models is loaded yet.
        """
        view = self._view
        if view is None:
            raise NotReadyError(
                f"no snapshot loaded yet ({self.last_error or 'none published'}); run "
                "`streamrec learn full` so the ranker and retriever publish one"
            )
        return view

    def refresh(self) -> bool:
        """Load newer versions if there are any; return whether a new view went live."""
        with self._lock:
            old = self._view
            try:
                snaps = {}
                for name, reader in self._readers.items():
                    if old is None:
                        snaps[name] = reader.latest()
                    else:
                        snaps[name] = reader.refresh(old.snapshots[name])
            except (SnapshotNotFoundError, LearnersError) as exc:
                self.last_error = str(exc)
                return False
            for name, reader in self._optional.items():
                try:
                    had = old.snapshots.get(name) if old is not None else None
                    snaps[name] = reader.refresh(had) if had is not None else reader.latest()
                except (SnapshotNotFoundError, LearnersError) as exc:
                    logger.debug("no %s snapshot to serve (%s)", name, exc)
            for name, snap in list(snaps.items()):
                had = old.snapshots.get(name) if old is not None else None
                if (  # a store listing behind a delta applied from its announcement
                    had is not None
                    and snap.versions[:1] == had.versions[:1]
                    and snap.manifest.version < had.manifest.version
                ):
                    snaps[name] = had
            if old is not None and {k: s.manifest.version for k, s in snaps.items()} == (
                old.versions
            ):
                return False
            self._swap(old, snaps)
            return True

    def apply_announced(self, announcements: list[Announcement]) -> bool:
        """Apply the deltas carried in `announcements` that follow the versions served, in
        order, and put them live in one view; return whether all were applied (False: the
        store has to be read, `refresh`). Announcements of models not served are ignored."""
        roles = {reader.model: r for r, reader in {**self._readers, **self._optional}.items()}
        with self._lock:
            old = self._view
            if old is None:
                return False
            snaps, complete = dict(old.snapshots), True
            for announcement in announcements:
                manifest = announcement.manifest
                role = roles.get(manifest.model)
                held = snaps.get(role) if role is not None else None
                if role is None or (held is not None and manifest.version <= held.manifest.version):
                    continue  # not served, or already read from the store
                if held is None or not announcement.files or not delta_follows(held, manifest):
                    complete = False
                    continue
                try:
                    snaps[role] = apply_delta(held, manifest, announcement.files)
                except SnapshotError as exc:  # damaged in transit: the store has it whole
                    logger.warning("%s", exc)
                    complete = False
                    continue
                self.carried += 1
            if any(s is not old.snapshots.get(k) for k, s in snaps.items()):
                self._swap(old, snaps)
            return complete

    def _swap(self, old: ModelView | None, snaps: dict[str, Snapshot]) -> None:
        """Build the view of `snaps` (reusing what `old` has of the same versions) and put it
        live; called under the lock."""
        kept = {
            k
            for k, s in snaps.items()
            if old is not None and s.manifest.version == old.versions.get(k)
        }
        for k in kept:
            snaps[k] = old.snapshots[k]
        ranker = old.ranker if "ranker" in kept else Ranker.from_snapshot(snaps["ranker"])
        if "retriever" in kept:
            retriever, index = old.retriever, old.index
        else:
            retriever = Retriever.from_snapshot(snaps["retriever"])
            index = _index_for(retriever, old, snaps["retriever"], self._config)
        preranker = None
        if "preranker" in kept:
            preranker = old.preranker
        elif "preranker" in snaps:
            preranker = PreRanker.from_snapshot(snaps["preranker"])
        self._view = ModelView(ranker, retriever, index, snaps, time.time(), preranker)
        self.last_error = None
        self.swaps += 1
        logger.info("serving versions %s (%d notes indexed)", self._view.versions, len(index))

    def pinned(self, pins: dict[str, tuple[str | None, int | None]]) -> ModelView:
        """The view an experiment arm asks for: per role ("ranker", "retriever") another model
        name and/or a pinned version; the other role as in `current()`.

        A pinned version is loaded once and kept; a model's newest version is looked up again
        after `poll_interval_s`. The first request of an arm pays the load (and, for a
        retriever, the index build).

        Raises:
            NotReadyError: the current view is not loaded yet, or the pinned snapshot cannot be.
        """
        view = self.current()
        if not pins:
            return view
        key = (tuple(sorted(pins.items())), view.versions["ranker"], view.versions["retriever"])
        cached = self._pinned.get(key)
        now = time.monotonic()
        fresh = all(v is not None for _, v in pins.values())
        if cached is not None and (fresh or now - cached[0] < self._config.poll_interval_s):
            return cached[1]
        snaps, models = dict(view.snapshots), {}
        try:
            for role, (model, version) in pins.items():
                reader = (
                    self._readers[role]
                    if model is None or model == self._readers[role].model
                    else SnapshotReader(self._root, model)
                )
                snaps[role] = reader.load(version) if version is not None else reader.latest()
                models[role] = snaps[role]
        except (SnapshotNotFoundError, LearnersError) as exc:
            raise NotReadyError(f"an experiment arm pins {pins}: {exc}") from exc
        ranker = Ranker.from_snapshot(models["ranker"]) if "ranker" in models else view.ranker
        if "retriever" in models:
            retriever = Retriever.from_snapshot(models["retriever"])
            index = _index_for(retriever, None, models["retriever"], self._config)
        else:
            retriever, index = view.retriever, view.index
        pinned = ModelView(ranker, retriever, index, snaps, time.time(), view.preranker)
        with self._lock:
            if len(self._pinned) >= 8:  # stale keys of older current views
                self._pinned.pop(next(iter(self._pinned)))
            self._pinned[key] = (now, pinned)
        return pinned

    def wake(self) -> None:
        """Check for new versions now (an announcement arrived)."""
        self._wake.set()

    def start(self, bootstrap: Broker | None = None, topic: str | None = None) -> None:
        """Poll in a background thread; with a broker, also follow the announcements topic."""
        self._threads = [threading.Thread(target=self._poll, daemon=True, name="snap-poll")]
        if bootstrap and topic:
            follow = threading.Thread(
                target=self._follow, args=(bootstrap, topic), daemon=True, name="snap-follow"
            )
            self._threads.append(follow)
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        """Stop the background threads."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(5)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:  # keep serving the last good view
                self.last_error = f"loading a snapshot failed: {exc}"
                logger.exception("snapshot refresh failed")
            self._wake.wait(self._config.poll_interval_s)
            self._wake.clear()

    def _follow(self, bootstrap: Broker, topic: str) -> None:
        try:
            announcements = Announcements(bootstrap, topic)
        except Exception as exc:  # the directory poll goes on without announcements
            logger.warning("not following %s (%s); polling the directory only", topic, exc)
            return
        with announcements:
            while not self._stop.is_set():
                try:
                    batch = announcements.poll(0.2)
                    if batch and not self.apply_announced(batch):
                        self._wake.set()
                except Exception as exc:  # a broker hiccup: the directory poll covers it
                    logger.warning("reading %s failed (%s); retrying", topic, exc)
                    self._stop.wait(1.0)
