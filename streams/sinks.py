"""Small Bytewax sinks used by the jobs, and `metered`, which measures any sink's writes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    Sink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from streams import metrics


class _CallbackPartition(StatelessSinkPartition[Any]):
    def __init__(self, callback: Callable[[Any], None]) -> None:
        self._callback = callback

    def write_batch(self, items: list[Any]) -> None:
        for item in items:
            self._callback(item)


class CallbackSink(DynamicSink[Any]):
    """Calls `callback(item)` for every item, in the worker that produced it."""

    def __init__(self, callback: Callable[[Any], None]) -> None:
        self._callback = callback

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _CallbackPartition:
        del step_id, worker_index, worker_count
        return _CallbackPartition(self._callback)


class _Meters:
    """The series of one metered sink: items written, write latency, last flush."""

    def __init__(self, flow: str, sink: str, store: str) -> None:
        self.flow, self.sink = flow, sink
        self.items = metrics.SINK_ITEMS.labels(flow, sink)
        self.seconds = metrics.WRITE_SECONDS.labels(flow, sink, store)

    def write(self, write: Callable[[list], None], items: list) -> None:
        start = time.perf_counter()
        write(items)
        self.seconds.observe(time.perf_counter() - start)
        self.items.inc(len(items))
        metrics.flushed(self.flow, self.sink)


class _MeteredStateless(StatelessSinkPartition[Any]):
    def __init__(self, inner: StatelessSinkPartition, meters: _Meters) -> None:
        self._inner, self._meters = inner, meters

    def write_batch(self, items: list[Any]) -> None:
        self._meters.write(self._inner.write_batch, items)

    def close(self) -> None:
        self._inner.close()


class _MeteredStateful(StatefulSinkPartition[Any, Any]):
    def __init__(self, inner: StatefulSinkPartition, meters: _Meters) -> None:
        self._inner, self._meters = inner, meters

    def write_batch(self, values: list[Any]) -> None:
        self._meters.write(self._inner.write_batch, values)

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class _Forwarding:
    """Attributes a metered sink does not have are its inner sink's (its settings, e.g.)."""

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("_inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


class _MeteredDynamic(_Forwarding, DynamicSink[Any]):
    def __init__(self, inner: DynamicSink, meters: _Meters) -> None:
        self._inner, self._meters = inner, meters

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MeteredStateless:
        return _MeteredStateless(
            self._inner.build(step_id, worker_index, worker_count), self._meters
        )


class _MeteredPartitioned(_Forwarding, FixedPartitionedSink[Any, Any]):
    def __init__(self, inner: FixedPartitionedSink, meters: _Meters) -> None:
        self._inner, self._meters = inner, meters

    def list_parts(self) -> list[str]:
        return self._inner.list_parts()

    def part_fn(self, item_key: str) -> int:
        return self._inner.part_fn(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _MeteredStateful:
        return _MeteredStateful(
            self._inner.build_part(step_id, for_part, resume_state), self._meters
        )


def metered(sink: Sink, flow: str, name: str, store: str) -> Sink:
    """`sink`, with every write measured in `streams.metrics`: items written
    (`streamrec_job_sink_items_total`), the write's wall time (`streamrec_job_sink_write_seconds`,
    `store` one of `redis`, `kafka`, `parquet`) and its time (`..._last_flush_*`).

    Args:
        sink: a `DynamicSink` or a `FixedPartitionedSink` (its partitions' state is kept).
        flow: the job (the `flow` label); name: the sink (the `sink` label).
    """
    meters = _Meters(flow, name, store)
    if isinstance(sink, DynamicSink):
        return _MeteredDynamic(sink, meters)
    if isinstance(sink, FixedPartitionedSink):
        return _MeteredPartitioned(sink, meters)
    raise TypeError(f"cannot meter a {type(sink).__name__}: not a DynamicSink or partitioned sink")
