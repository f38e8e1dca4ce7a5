"""Replay sources: each yields batches of events in event-time order, deterministically."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

import numpy as np

from streams.events import Event


class EncodedBatch(NamedTuple):
    """One batch of events as Kafka messages, in event-time order."""

    keys: list[bytes]
    """Message key of each event (its user_id)."""
    values: list[bytes]
    """Encoded event of each message (`streams.events.encode_event`)."""
    counts: dict[str, int]
    """Events per type in the batch."""
    first_ts: int
    """Event time of the first event."""
    last_ts: int
    """Event time of the last event."""


class EventSource(Protocol):
    """A replayable source of events in event-time order."""

    name: str

    def batches(self) -> Iterator[list[Event]]:
        """Yield lists of events; concatenated they are sorted by `ts`."""
        ...

    def estimated_total(self) -> int | None:
        """Return how many events the source will yield, if known cheaply."""
        ...


class ListSource:
    """A source over events already in memory (sorted by `ts`), in batches of `batch`."""

    name = "list"

    def __init__(self, events: list[Event], batch: int = 10_000) -> None:
        self._events, self._batch = events, batch

    def batches(self) -> Iterator[list[Event]]:
        """Yield consecutive slices of the events."""
        for lo in range(0, len(self._events), self._batch):
            yield self._events[lo : lo + self._batch]

    def estimated_total(self) -> int:
        """Return the number of events."""
        return len(self._events)


def expand_rows(
    base_ts: np.ndarray, parts: list[tuple[str, int, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expand rows into events (one per part whose mask is set) sorted by event time.

    Args:
        base_ts: event time in ms of each row, shape (R,).
        parts: (event type, offset in ms added to the row's time, boolean mask (R,)) per part,
            in the order events of the same row and time are emitted.

    Returns:
        (ts, part index, row index) of every event, sorted by ts, then row order, then part.
    """
    ts, part, row = [], [], []
    for i, (_, offset, mask) in enumerate(parts):
        rows = np.flatnonzero(mask)
        ts.append(base_ts[rows] + offset)
        part.append(np.full(len(rows), i, dtype=np.int64))
        row.append(rows)
    ts_all, part_all, row_all = np.concatenate(ts), np.concatenate(part), np.concatenate(row)
    order = np.lexsort((part_all, row_all, ts_all))
    return ts_all[order], part_all[order], row_all[order]
