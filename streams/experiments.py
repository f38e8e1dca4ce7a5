"""The experiments job: per experiment x arm x day x user counts from `interactions`.

Dataflow: Kafka batches -> the ingest step (decode, clock, DLQ, lateness, duplicate event ids)
-> per partition, the events' arms -> counters per (experiment, arm, UTC day, user):
impressions, clicks, likes, plays, watch time, completions -> the experiment log
(`features.experiment_log`, parquet parts the report reads). An event counts for the arms it
carries (`Event.arms`, schema version 2); an event without arms counts for the arms its user's
last event with arms carried (actions are often logged without them; `inherit_arms: false`
counts only events that carry arms), and is counted as unattributed when the user has none yet.

A cell is written when it changed and the partition flushes (every `flush_interval_s` of wall
time, and at the end of a bounded run), and once more when its day closes (the partition's
high-water mark passed the day's end by the allowed lateness; events older than that are
dead-lettered as `late` by the ingest step); a closed cell leaves the state. The log keeps the
last row of a cell, so rows written again after a restart replace themselves. Users are keyed
by Kafka partition (the topic is keyed by user_id), so one user's cells live in one state.
"""

from __future__ import annotations

import copy
import time
from collections import Counter as Tally
from dataclasses import dataclass, field
from pathlib import Path

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulLogic
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition
from prometheus_client import Counter

from features.experiment_log import COUNTS, SCHEMA, write_part
from features.windows import COMPLETION_FRACTION, DAY
from streams import metrics
from streams.config import DEFAULT_LIMITS, EventLimits, ExperimentFlowConfig
from streams.ingest import Columns, ingest_flow
from streams.kafka_io import RawBatch

ARM_EVENTS = Counter(
    "streamrec_experiment_events",
    "Events counted per experiment arm, by type (impression, click, like, play)",
    ["experiment", "arm", "type"],
    registry=metrics.REGISTRY,
)
UNATTRIBUTED = Counter(
    "streamrec_experiment_unattributed",
    "Events without arms whose user had no known arms yet (counted for no experiment)",
    registry=metrics.REGISTRY,
)
_SLOT = {"impression": 0, "click": 1, "like": 2, "play": 3}


@dataclass(frozen=True, slots=True)
class ArmEvents:
    """The events of one batch a partition's counters need, and its high-water mark."""

    users: list[str]
    types: list[str]
    arms: list[dict[str, str] | None]
    day: np.ndarray
    watch: np.ndarray
    completed: np.ndarray
    hwm: int


def arm_events_of(cols: Columns, hwm: int | None) -> list[tuple[str, ArmEvents]]:
    """Split of a batch for the counters: one part per Kafka partition."""
    if not len(cols.ts) or hwm is None:
        return []
    completed = (cols.duration > 0) & (cols.watch >= COMPLETION_FRACTION * cols.duration)
    part = ArmEvents(
        cols.users,
        [e.type for e in cols.events],
        [e.arms for e in cols.events],
        cols.ts // DAY,
        cols.watch,
        completed,
        hwm,
    )
    return [(str(cols.partition), part)]


@dataclass
class ArmState:
    """A partition's counters (snapshotted with the flow's recovery)."""

    cells: dict[tuple[str, str, int, str], list[int]] = field(default_factory=dict)
    """(experiment, arm, day, user) -> the `COUNTS` counters."""
    dirty: set[tuple[str, str, int, str]] = field(default_factory=set)
    """Cells changed since they were last written."""
    user_arms: dict[str, dict[str, str]] = field(default_factory=dict)
    """The arms each user's last event with arms carried."""
    hwm: int | None = None
    open_from: int | None = None
    """The first day not closed yet (None before the first event)."""
    seq: int = 0
    """Rows written so far (orders two rows of a cell written in one millisecond)."""


@dataclass(frozen=True, slots=True)
class ArmRows:
    """Rows for the experiment log (columns of `features.experiment_log.SCHEMA`)."""

    columns: dict[str, list]

    def __len__(self) -> int:
        return len(self.columns["experiment"])


class ArmLogic(StatefulLogic[ArmEvents, ArmRows, ArmState]):
    """The counters of one Kafka partition (module docstring)."""

    def __init__(self, state: ArmState, config: ExperimentFlowConfig, recoverable: bool) -> None:
        self.state, self.config, self.recoverable = state, config, recoverable
        self._flushed = time.monotonic()
        self._meters: dict[tuple[str, str, str], Counter] = {}

    def _count(self, tally: Tally) -> None:
        for key, n in tally.items():
            meter = self._meters.get(key)
            if meter is None:
                meter = self._meters[key] = ARM_EVENTS.labels(*key)
            meter.inc(n)

    def on_item(self, value: ArmEvents) -> tuple[list[ArmRows], bool]:
        st = self.state
        cells, dirty, known = st.cells, st.dirty, st.user_arms
        inherit = self.config.inherit_arms
        tally: Tally = Tally()
        lost = 0
        for i, user in enumerate(value.users):
            arms = value.arms[i]
            if arms is not None:
                known[user] = arms
            elif inherit:
                arms = known.get(user)
            kind = value.types[i]
            slot = _SLOT.get(kind)
            if slot is None:
                continue
            if arms is None:
                lost += 1
                continue
            day = int(value.day[i])
            for exp, arm in arms.items():
                key = (exp, arm, day, user)
                cell = cells.get(key)
                if cell is None:
                    cell = cells[key] = [0] * len(COUNTS)
                cell[slot] += 1
                if slot == 3:
                    cell[4] += int(value.watch[i])
                    cell[5] += int(value.completed[i])
                dirty.add(key)
                tally[(exp, arm, kind)] += 1
        if lost:
            UNATTRIBUTED.inc(lost)
        self._count(tally)
        st.hwm = value.hwm if st.hwm is None else max(st.hwm, value.hwm)
        return self._emit(final=False), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[ArmRows], bool]:
        return self._emit(final=True), StatefulLogic.RETAIN

    def _emit(self, final: bool) -> list[ArmRows]:
        st = self.state
        closed: list[tuple[str, str, int, str]] = []
        if st.hwm is not None:
            open_from = (st.hwm - self.config.allowed_lateness_ms) // DAY
            if st.open_from is None or open_from > st.open_from:
                st.open_from = open_from  # days before it are closed: no event can reach them
                closed = [k for k in st.cells if k[2] < open_from]
        due = final or time.monotonic() - self._flushed >= self.config.flush_interval_s
        if due:
            self._flushed = time.monotonic()
            keys = sorted(st.dirty)
        else:
            keys = sorted(k for k in closed if k in st.dirty)
        rows = _rows(keys, st.cells, st.seq)
        st.seq += len(keys)
        st.dirty.difference_update(keys)
        for k in closed:
            del st.cells[k]
        return [rows] if len(rows) else []

    def snapshot(self) -> ArmState | None:
        # Bytewax asks for snapshots every epoch even without recovery; copying is then waste.
        return copy.deepcopy(self.state) if self.recoverable else None


def _rows(keys: list[tuple[str, str, int, str]], cells: dict, seq: int) -> ArmRows:
    now = int(time.time() * 1000)
    cols: dict[str, list] = {f.name: [] for f in SCHEMA}
    for j, key in enumerate(keys):
        exp, arm, day, user = key
        cols["experiment"].append(exp)
        cols["arm"].append(arm)
        cols["day"].append(day)
        cols["user_id"].append(user)
        for name, v in zip(COUNTS, cells[key], strict=True):
            cols[name].append(v)
        cols["updated_ms"].append(now)
        cols["seq"].append(seq + j)
    return ArmRows(cols)


def build_flow(
    source: Source[RawBatch],
    sink: Sink[ArmRows],
    dlq: DynamicSink,
    config: ExperimentFlowConfig | None = None,
    limits: EventLimits = DEFAULT_LIMITS,
    recoverable: bool = True,
) -> Dataflow:
    """Build the experiments dataflow.

    Args:
        source: raw Kafka batches (`KafkaBatchSource` or a `TestingSource` of `RawBatch`).
        sink: receives `ArmRows` (an `ExperimentLogSink` in production).
        dlq: receives the dead letters (undecodable, late, ...).
        config: lateness and flush interval.
        limits: event decoding limits.
        recoverable: snapshot the counters each epoch (off only when running without recovery).
    """
    config = config or ExperimentFlowConfig()
    flow, parts = ingest_flow(
        "experiments",
        source,
        dlq,
        limits=limits,
        lateness_ms=config.allowed_lateness_ms,
        shard=arm_events_of,
        dedupe=True,
        recoverable=recoverable,
    )
    counted = op.stateful(
        "arms",
        parts,
        lambda resume: ArmLogic(resume or ArmState(), config, recoverable),
    )
    op.output("log", op.key_rm("rows", counted), sink)
    return flow


class _LogPartition(StatelessSinkPartition[ArmRows]):
    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def write_batch(self, items: list[ArmRows]) -> None:
        columns = {f.name: [v for item in items for v in item.columns[f.name]] for f in SCHEMA}
        write_part(self._directory, columns)


class ExperimentLogSink(DynamicSink[ArmRows]):
    """Appends the rows of each sink batch as one parquet part of the experiment log.

    Args:
        directory: the log's directory (`DataPaths.experiment_log`).
    """

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LogPartition:
        del step_id, worker_index, worker_count
        return _LogPartition(self._directory)
