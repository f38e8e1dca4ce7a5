"""Small Bytewax sinks used by the jobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition


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
