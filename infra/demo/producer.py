"""The demo's event streams: the synthetic world re-timed, replayed fast or at wall-clock pace."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import msgspec

from infra.demo.errors import DemoError
from streams.events import Event, encode_event
from streams.sources.synthetic import SyntheticSource


def now_ms() -> int:
    """Wall clock, epoch milliseconds."""
    return int(time.time() * 1000)


class EventStream:
    """The synthetic event stream, re-timed: event k of the world happens at `offset + ts`."""

    def __init__(self, source: SyntheticSource) -> None:
        self._batches = source.batches()
        self._buffer: list[Event] = []
        self.offset_ms = 0

    def until(self, end_ms: int) -> Iterator[list[Event]]:
        """Batches of events (re-timed) before `end_ms`."""
        while True:
            if not self._buffer:
                self._buffer = next(self._batches, [])
                if not self._buffer:
                    return
            shifted = [msgspec.structs.replace(e, ts=e.ts + self.offset_ms) for e in self._buffer]
            cut = next((i for i, e in enumerate(shifted) if e.ts >= end_ms), len(shifted))
            if cut:
                yield shifted[:cut]
            self._buffer = self._buffer[cut:]
            if self._buffer:
                return


def produce_history(producer, topic: str, stream: EventStream, end_ms: int, progress, task) -> int:
    """Produce the events before `end_ms` as fast as the broker takes them; return the count.

    Raises:
        DemoError: the broker did not acknowledge them all within 60 s.
    """
    n = 0
    for batch in stream.until(end_ms):
        for e in batch:
            while True:
                try:
                    producer.produce(topic, encode_event(e), e.user_id.encode())
                    break
                except BufferError:
                    producer.poll(0.05)
        producer.poll(0)
        n += len(batch)
        progress.update(task, completed=n)
    if producer.flush(60):
        raise DemoError("the broker did not acknowledge the history events")
    return n


def produce_live(
    producer, topic: str, stream: EventStream, end_ms: int, stop: threading.Event
) -> int:
    """Produce events when the wall clock reaches their event time; return the count."""
    n = 0
    for batch in stream.until(end_ms):
        for lo in range(0, len(batch), 64):
            chunk = batch[lo : lo + 64]
            delay = (chunk[0].ts - now_ms()) / 1000
            if delay > 0:
                time.sleep(delay)
            if stop.is_set():
                return n
            for e in chunk:
                producer.produce(topic, encode_event(e), e.user_id.encode())
            producer.poll(0)
            n += len(chunk)
    producer.flush(30)
    return n
