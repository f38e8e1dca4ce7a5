"""Retry a store call with bounded exponential backoff, saying so in the log.

A Redis that restarts, fails over or is briefly unreachable makes a job wait and retry, not die:
the job resumes by itself once the store answers again. Past `give_up_s` the error goes up and the
job stops with a message naming the store (a supervisor restarts it from its recovery store).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from streams.errors import StoreUnavailableError

logger = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError)
"""Errors worth a retry: the store is down, restarting (redis-py's BusyLoadingError is a
ConnectionError) or slow - not a refused command."""


def with_retry(
    call: Callable[[], T],
    what: str,
    *,
    first_s: float = 0.1,
    max_s: float = 5.0,
    give_up_s: float = 300.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """`call()`, retried on transient store errors with backoff `first_s` doubling to `max_s`.

    Raises:
        StoreUnavailableError: the store did not answer for `give_up_s` seconds.
    """
    start, delay = clock(), first_s
    while True:
        try:
            return call()
        except TRANSIENT as exc:
            waited = clock() - start
            if waited + delay > give_up_s:
                raise StoreUnavailableError(
                    f"{what}: Redis unavailable for {waited:.0f} s ({exc}); check that it runs "
                    "and answers, then restart the job (it resumes from its recovery store)"
                ) from exc
            logger.warning("%s: Redis unavailable (%s); retrying in %.1f s", what, exc, delay)
            sleep(delay)
            delay = min(delay * 2, max_s)
