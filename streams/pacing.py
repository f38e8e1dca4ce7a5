"""Adaptive coalescing: the online sink reports how long its writes take, flushes wait longer.

Within one process the stats shards and the online sink run in the same worker thread, so a
write that takes longer than the flush interval would otherwise be followed at once by the next
flush, and the job would spend its time writing rows that changed by one event. With pacing a
shard waits max(flush interval, 2 x the recent write time) between flushes: under light load
values are written every interval (freshness), under heavy load more updates coalesce into each
write (throughput). The pacer is per process (module-level), like the worker thread it serves.
"""

from __future__ import annotations

import threading


class WritePacer:
    """Keeps a moving average of the online write time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._avg_s = 0.0

    def record(self, seconds: float) -> None:
        """Account one write of `seconds`."""
        with self._lock:
            self._avg_s = 0.7 * self._avg_s + 0.3 * seconds

    def interval_s(self, base_s: float) -> float:
        """Seconds to wait before the next flush."""
        return max(base_s, 2.0 * self._avg_s)


PACER = WritePacer()
