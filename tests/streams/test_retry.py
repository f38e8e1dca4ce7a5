"""Store calls retry with bounded backoff on a down Redis and give up with a clear error."""

from __future__ import annotations

import pytest
import redis

from streams.errors import StoreUnavailableError
from streams.retry import with_retry


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_transient_outage_is_waited_out_with_backoff(caplog) -> None:
    clock = FakeClock()
    failures = iter([redis.ConnectionError("refused"), redis.TimeoutError("slow")])

    def call() -> str:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return "written"

    assert with_retry(call, "sink", sleep=clock.sleep, clock=lambda: clock.now) == "written"
    assert clock.slept == [0.1, 0.2]
    assert "sink: Redis unavailable" in caplog.text and "retrying in 0.1 s" in caplog.text


def test_a_long_outage_gives_up_naming_the_store() -> None:
    clock = FakeClock()

    def down() -> None:
        raise redis.ConnectionError("Connection refused")

    with pytest.raises(StoreUnavailableError, match="stats sink: Redis unavailable for"):
        with_retry(down, "stats sink", give_up_s=30, sleep=clock.sleep, clock=lambda: clock.now)
    assert sum(clock.slept) <= 30 and max(clock.slept) == 5.0


def test_a_refused_command_is_not_retried() -> None:
    calls = []

    def refused() -> None:
        calls.append(1)
        raise redis.ResponseError("WRONGTYPE")

    with pytest.raises(redis.ResponseError):
        with_retry(refused, "sink", sleep=lambda _: None)
    assert calls == [1]
