"""The online learner: `training-samples` -> ID-embedding updates -> delta and full snapshots.

Dense parameters (and the shared default ID rows) stay frozen at the last full training
(bit-identical); only the admitted ID rows are trained (row-wise Adagrad at `online_emb_lr`),
new IDs admitted on the fly. Every `delta_every_s` the rows changed
since the last version are published as a delta of each model, every `full_every_s` a full.
Every version's meta carries the Kafka offsets its model has applied (`offsets`). The two
models are published one after the other, so a crash (or a full disk) between the two publishes,
or a newest version lost or corrupt for one model, leaves them at different offsets: a restarted
learner loads the latest readable snapshot of each, reads on from the lowest of the two per
partition (`learners.training.applied_offsets`) and gives each model only the messages it has
not applied yet (`OnlineLearner.applied`). No model skips a sample and none applies one twice
(docs/learning.md "Restarts").

The learner is a plain consumer loop rather than a Bytewax flow: it has one piece of state
(the models) that must be published whole, not keyed state to partition, and assigning all
partitions to one consumer avoids the broker's slow group join.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgspec
from confluent_kafka import KafkaError, TopicPartition

from features.samples import SampleBatch, decode_batch
from features.schema import FeatureConfig
from learners.config import LearnConfig
from learners.errors import LearnersError
from learners.export import snapshot_exports
from learners.inputs import Columns
from learners.snapshots import (
    Manifest,
    Publication,
    SnapshotConfig,
    SnapshotConflictError,
    SnapshotNotFoundError,
    SnapshotReader,
    SnapshotWriter,
    check_writable,
    publish_failed,
)
from learners.training import (
    PreRankerState,
    RankerState,
    RetrieverState,
    applied_offsets,
    check_priors,
)
from streams.config import Broker

logger = logging.getLogger(__name__)
FLOW = "learn-online"
MODELS = ("ranker", "retriever")
PRERANKER = "preranker"
"""The optional third model: trained and published when the learner has one."""


class NoFullSnapshotError(LearnersError):
    """The online learner needs a full snapshot to start from."""


@dataclass(frozen=True)
class Message:
    """One `training-samples` message."""

    partition: int
    offset: int
    value: bytes


@dataclass
class OnlineReport:
    """What an online run did."""

    samples: int = 0
    batches: int = 0
    bad_messages: int = 0
    deltas: int = 0
    fulls: int = 0
    train_s: float = 0.0
    published: list[Manifest] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        """Training throughput (samples / time spent in training steps)."""
        return self.samples / self.train_s if self.train_s else 0.0


class OnlineLearner:
    """Trains the ID embeddings of the ranker and the retriever and publishes snapshots.

    Args:
        ranker, retriever: models loaded from their latest snapshots (dense frozen here).
        writers: "ranker" and "retriever" snapshot writers.
        config: learner settings; snapshots: publishing intervals.
        offsets: partition -> next offset both models have applied (where reading resumes).
        applied: per model ("ranker", "retriever"), partition -> next offset it has applied
            (its snapshot's `offsets`); a message below it is not given to that model again.
            Default: `offsets` for both.
        on_dead_letter: called with (message, reason) for undecodable messages.
        clock: monotonic seconds (tests pass a controlled one).
        preranker: the three-tower pre-ranker (`learners.preranker`), trained on the same
            messages (distilled from the ranker when its `distill` > 0) and published as model
            "preranker"; None: not trained.
    """

    def __init__(
        self,
        ranker: RankerState,
        retriever: RetrieverState,
        writers: dict[str, SnapshotWriter],
        config: LearnConfig,
        snapshots: SnapshotConfig,
        offsets: dict[int, int] | None = None,
        on_dead_letter: Callable[[Message, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        applied: dict[str, dict[int, int]] | None = None,
        preranker: PreRankerState | None = None,
    ) -> None:
        self.ranker, self.retriever, self.preranker = ranker, retriever, preranker
        self.names = MODELS if preranker is None else (*MODELS, PRERANKER)
        """The models trained and published."""
        for m in (ranker, retriever, *([] if preranker is None else [preranker])):
            m.freeze_dense()
            m.set_embedding_lr(config.online_emb_lr)
        ranker.track_offsets(config.calibration_window)
        ranker.track_auc(config.auc_window)
        self.writers = writers
        self.config = config
        self.snapshots = snapshots
        self.offsets: dict[int, int] = dict(offsets or {})
        self.applied: dict[str, dict[int, int]] = {
            name: dict((applied or {}).get(name, self.offsets)) for name in self.names
        }
        self._dead = on_dead_letter
        self._clock = clock
        self._last_delta = self._last_full = clock()
        self.bases: dict[str, int | None] = dict.fromkeys(self.names)
        self._pending: list[tuple[Columns, tuple[str, ...]]] = []
        self._pending_n = 0
        self.report = OnlineReport()

    @classmethod
    def from_latest(
        cls,
        config: LearnConfig,
        snapshots: SnapshotConfig,
        announce: Callable[[Publication], None] | None = None,
        on_dead_letter: Callable[[Message, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        features: FeatureConfig | None = None,
    ) -> OnlineLearner:
        """Start from the latest snapshots of both models (as full training left them).

        The ranker keeps the priors it was trained with; `features` (`Settings.features`) is
        only checked against them (`learners.training.check_priors` warns).

        Reading resumes from the offsets both models' snapshots have applied (per partition
        the minimum), so neither skips a sample; each model is given only the messages past
        its own snapshot's offsets, so neither applies one twice. When a model's newest
        version is unusable (the reader fell back past it), the first publish is a full, since
        deltas published after an unusable version could not be applied.

        Raises:
            SnapshotRootNotWritableError: the snapshot root cannot take new versions (checked
                first, before anything is loaded).
            NoFullSnapshotError: a model has no snapshot yet (run `streamrec learn full`).
        """
        names = {"ranker": config.ranker_model, "retriever": config.retriever_model}
        check_writable(snapshots.location, names.values())
        skipped: list[LearnersError] = []

        def fell_back(exc: LearnersError) -> None:
            logger.warning("%s", exc)
            skipped.append(exc)

        try:
            snaps = {
                k: SnapshotReader(snapshots.location, n, on_fallback=fell_back).latest()
                for k, n in names.items()
            }
        except SnapshotNotFoundError as exc:
            raise NoFullSnapshotError(
                f"{exc}. The online learner updates the ID embeddings of a trained model: run "
                "`streamrec learn full` first"
            ) from exc
        if config.preranker_model:  # optional: without a snapshot it is not trained
            try:
                root, pre = snapshots.location, config.preranker_model
                snaps[PRERANKER] = SnapshotReader(root, pre, on_fallback=fell_back).latest()
                names[PRERANKER] = config.preranker_model
            except SnapshotNotFoundError:
                logger.info("no %s snapshot: not trained online", config.preranker_model)
        metas = {k: s.manifest.meta for k, s in snaps.items()}
        offsets = applied_offsets(metas.values())
        applied = {k: applied_offsets([m]) for k, m in metas.items()}
        learner = cls(
            RankerState.from_snapshot(snaps["ranker"]),
            RetrieverState.from_snapshot(snaps["retriever"]),
            {
                k: SnapshotWriter(snapshots.location, n, snapshots, announce)
                for k, n in names.items()
            },
            config,
            snapshots,
            offsets,
            on_dead_letter,
            clock,
            applied,
            PreRankerState.from_snapshot(snaps[PRERANKER]) if PRERANKER in snaps else None,
        )
        check_priors(learner.ranker, features)
        learner.bases = {k: s.versions[0] for k, s in snaps.items()}
        if skipped:  # deltas never chain over an unusable version: start anew with a full
            learner._last_full = -math.inf
        return learner

    def add(self, message: Message) -> None:
        """Decode one message and queue its samples (training happens per `batch_size`).

        A model whose snapshot has already applied the message (`applied`) does not get it.
        """
        p, o = message.partition, message.offset
        takers = tuple(n for n in self.names if o >= self.applied[n].get(p, 0))
        if takers:
            try:
                batch: SampleBatch = decode_batch(message.value)
                cols = Columns.from_samples(batch.samples)
            except (msgspec.ValidationError, msgspec.DecodeError, LearnersError) as exc:
                self.report.bad_messages += 1
                if self._dead is not None:
                    self._dead(message, str(exc))
                logger.warning("bad training-samples message %s@%s: %s", p, o, exc)
            else:
                self._pending.append((cols, takers))
                self._pending_n += len(cols)
        for name in takers:
            self.applied[name][p] = o + 1
        self.offsets[p] = max(self.offsets.get(p, 0), o + 1)
        if self._pending_n >= self.config.batch_size:
            self.flush()

    def flush(self) -> None:
        """Train on the queued samples (each model on the messages it takes)."""
        if not self._pending:
            return
        pending, self._pending, self._pending_n = self._pending, [], 0
        self.report.samples += sum(len(cols) for cols, _ in pending)
        self.report.batches += 1
        if all(len(takers) == len(self.names) for _, takers in pending):
            self.train(Columns.concat([cols for cols, _ in pending]))
            return
        for name in self.names:
            mine = [cols for cols, takers in pending if name in takers]
            if mine:
                self.train(Columns.concat(mine), (name,))

    def train(self, cols: Columns, models: tuple[str, ...] | None = None) -> None:
        """One step of each of `models` (default: all) on `cols` (ID rows only)."""
        t0 = time.perf_counter()
        for name in models or self.names:
            if name == PRERANKER:
                self.preranker.train_step(cols, None, teacher=self.ranker)
            else:
                getattr(self, name).train_step(cols, None)
        self.report.train_s += time.perf_counter() - t0

    def tick(self) -> list[Manifest]:
        """Publish what is due: a full every `full_every_s`, else a delta every `delta_every_s`."""
        now = self._clock()
        if now - self._last_full >= self.snapshots.full_every_s:
            return self.publish_full()
        if now - self._last_delta >= self.snapshots.delta_every_s:
            return self.publish_delta()
        return []

    def _meta(self, name: str, state: RankerState | RetrieverState) -> dict:
        offsets = self.applied[name]
        return state.meta({"offsets": {str(p): o for p, o in sorted(offsets.items())}})

    def _models(self) -> list[tuple[str, RankerState | RetrieverState | PreRankerState]]:
        return [(name, getattr(self, name)) for name in self.names]

    def publish_delta(self) -> list[Manifest]:
        """Publish the changed rows of both models (nothing for a model without changes)."""
        self.flush()
        self._last_delta = self._clock()
        out = []
        for name, state in self._models():
            state.expire(state.hwm_ms)
            changed = state.changed()
            if not changed:
                continue
            try:
                manifest = self.writers[name].publish_delta(
                    changed,
                    state.hwm_ms,
                    {**self._meta(name, state), **state.delta_meta(changed)},
                    base_version=self.bases[name],
                )
            except SnapshotConflictError:
                out += self._adopt_newer_full(name)
                continue
            except OSError as exc:
                raise publish_failed(
                    self.writers[name].model, self.snapshots.location, exc
                ) from exc
            state.store.clear_changed()
            out.append(manifest)
            self.report.deltas += 1
        self.report.published += out
        return out

    def publish_full(self) -> list[Manifest]:
        """Publish full snapshots of both models (dense parameters unchanged)."""
        self.flush()
        self._last_full = self._last_delta = self._clock()
        out = []
        for name, state in self._models():
            state.expire(state.hwm_ms)
            tables, dense = state.full_state()
            try:
                manifest = self.writers[name].publish_full(
                    tables, dense, state.hwm_ms, self._meta(name, state), snapshot_exports(state)
                )
            except OSError as exc:
                raise publish_failed(
                    self.writers[name].model, self.snapshots.location, exc
                ) from exc
            state.store.clear_changed()
            self.bases[name] = manifest.version
            out.append(manifest)
            self.report.fulls += 1
        self.report.published += out
        return out

    def _adopt_newer_full(self, name: str) -> list[Manifest]:
        """A full training published a newer full: continue from it (its dense parameters)."""
        writer = self.writers[name]
        snap = SnapshotReader(self.snapshots.location, writer.model).latest()
        cls = {"ranker": RankerState, "retriever": RetrieverState, PRERANKER: PreRankerState}[name]
        state = cls.from_snapshot(snap)
        state.freeze_dense()
        state.set_embedding_lr(self.config.online_emb_lr)
        if isinstance(state, RankerState):
            state.track_offsets(self.config.calibration_window)
            state.track_auc(self.config.auc_window, keep=self.ranker.prequential)
        setattr(self, name, state)
        self.bases[name] = snap.versions[0]
        logger.info("%s: continuing from the newer full version %s", name, snap.versions[0])
        return []

    def run(self, messages: Iterator[Message | None], until_end: bool = False) -> OnlineReport:
        """Consume `messages` (None = nothing new for a while), training and publishing.

        A bounded run (`until_end`, the iterator ends at the end of the topic) publishes a
        final delta of what is left.
        """
        for message in messages:
            if message is not None:
                self.add(message)
            else:
                self.flush()
            self.tick()
        self.flush()
        if until_end:
            self.publish_delta()
        return self.report


def kafka_messages(
    bootstrap: Broker,
    topic: str,
    offsets: dict[int, int],
    until_end: bool,
    poll_timeout_s: float = 0.2,
) -> Iterator[Message | None]:
    """Messages of every partition of `topic` from `offsets` (else the beginning), by assignment.

    Yields None when a poll returns nothing (so the caller can publish on time). With
    `until_end` it stops once every partition has reported EOF.
    """
    from confluent_kafka import OFFSET_BEGINNING

    from streams.kafka_io import make_consumer, partitions_of

    parts = partitions_of(bootstrap, topic)
    consumer = make_consumer(bootstrap, **{"fetch.wait.max.ms": 50})
    consumer.assign([TopicPartition(topic, p, offsets.get(p, OFFSET_BEGINNING)) for p in parts])
    at_end: set[int] = set()
    try:
        while not (until_end and len(at_end) == len(parts)):
            batch = consumer.consume(1000, poll_timeout_s)
            if not batch:
                yield None
                continue
            for m in batch:
                err = m.error()
                if err is None:
                    at_end.discard(m.partition())
                    yield Message(m.partition(), m.offset(), m.value())
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(m.partition())
                else:
                    raise LearnersError(f"reading {topic!r}: {err}; check `streamrec infra status`")
    finally:
        consumer.close()
