"""Replay sources: each yields batches of events in event-time order, deterministically."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import ClassVar, NamedTuple, Protocol

import numpy as np

from streams.errors import SourceError
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


class FileSource:
    """A source replaying one log file whose rows expand into events (`expand_rows`).

    Subclasses read the file and yield from `_batches` with the expanded rows; `missing` is the
    error message (formatted with `path`) when the file is not there.
    """

    name: ClassVar[str]
    missing: ClassVar[str]

    def __init__(self, path: Path, limit: int | None = None, batch_size: int = 10_000) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(self.missing.format(path=self.path))
        self.limit = limit
        self.batch_size = batch_size

    def estimated_total(self) -> int | None:
        """Return None: the count is known only after reading the file."""
        return None

    def _batches(
        self,
        expanded: tuple[np.ndarray, np.ndarray, np.ndarray],
        kinds: Sequence[str],
        users: np.ndarray,
        notes: np.ndarray,
        request_id: Callable[[int, str, str], str],
        extra: Callable[[str, int, str], dict[str, object]],
    ) -> Iterator[list[Event]]:
        """Yield the events of the first `limit` expanded rows, `batch_size` at a time.

        Args:
            expanded: (ts, part index, row index) of each event (`expand_rows`).
            kinds: event type of each part.
            users, notes: user and note id of each row.
            request_id: (row, user, note) -> the row's request id; the event id is
                `<request id>:<type>`.
            extra: (type, row, note) -> the event's other fields.
        """
        ts, part, row = expanded
        if self.limit is not None:
            ts, part, row = ts[: self.limit], part[: self.limit], row[: self.limit]
        for start in range(0, len(ts), self.batch_size):
            end = start + self.batch_size
            batch = []
            for t, p, r in zip(
                ts[start:end].tolist(),
                part[start:end].tolist(),
                row[start:end].tolist(),
                strict=True,
            ):
                u, n, kind = str(users[r]), str(notes[r]), kinds[p]
                request = request_id(r, u, n)
                batch.append(
                    Event(
                        event_id=f"{request}:{kind}",
                        ts=t,
                        user_id=u,
                        note_id=n,
                        type=kind,
                        request_id=request,
                        **extra(kind, r, n),
                    )
                )
            yield batch
