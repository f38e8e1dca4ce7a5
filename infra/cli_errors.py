"""How `streamrec` fails: one line on stderr naming the problem and the fix, and an exit code per
class of failure (the table is in docs/operations.md, "CLI failures and exit codes").

The mapping lives here, at the entry point (`infra.cli.main`), not in library code: libraries
raise their package's errors (and the clients' own connection errors pass through); `classify`
picks the most telling error of an exception's chain (Bytewax re-raises a worker's error as its
own, the original as cause or context) and `main` prints it. `--debug` (or `STREAMREC_DEBUG=1`)
prints the traceback before that line.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass

import typer

from features.errors import FeaturesError
from infra.errors import (
    BrokerUnreachableError,
    ConfigError,
    InfraError,
    RedisUnreachableError,
    StackError,
)
from learners.errors import LearnersError
from serving.errors import DependencyError, ServingError
from streams.errors import KafkaError as StreamsKafkaError
from streams.errors import (
    LogMismatchError,
    RecoveryStateError,
    StoreUnavailableError,
    StreamsError,
)

EXIT_UNEXPECTED = 1
"""An error no class below covers (a bug): the line names the exception; `--debug` shows where."""
EXIT_USAGE = 2
"""Usage or configuration: a bad flag or argument, an unreadable or invalid settings file, an input
or a state the command cannot use as it is (a recovery store from another log, a missing snapshot,
a missing replay file); the line says what to change."""
EXIT_KAFKA = 3
"""The Kafka broker does not answer, or failed an operation."""
EXIT_REDIS = 4
"""Redis does not answer, or failed an operation."""
EXIT_STACK = 5
"""No broker or Redis is known (`streamrec infra up` has not run here and nothing is set), or the
local stack could not be started."""
EXIT_INTERRUPTED = 130
"""Interrupted (Ctrl-C)."""

DEBUG_ENV = "STREAMREC_DEBUG"
"""Set (to 1) by `--debug`, so that the processes a command starts print tracebacks too."""

_CLICK = sys.modules[typer.BadParameter.__module__]
"""The click that typer raises from (typer >= 0.2x carries a copy of its own)."""
ClickException: type[Exception] = _CLICK.ClickException
NoArgsIsHelpError: type[Exception] | None = getattr(_CLICK, "NoArgsIsHelpError", None)
"""Raised (after typer printed the help) when a command group is called without a command."""

_where: dict[str, str] = {}
"""The services the running command resolved ({"kafka": "host:port (origin)", "redis": ...}),
named in the line of a client error that does not name its address itself."""


@dataclass(frozen=True)
class Failure:
    """What the command prints and how it exits."""

    code: int
    message: str

    def line(self) -> str:
        """The one line printed on stderr (whitespace and newlines of the message collapsed)."""
        return "error: " + " ".join(self.message.split())


def debugging() -> bool:
    """True when `--debug` was given (or `STREAMREC_DEBUG` is set)."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def remember(service: str, description: str) -> None:
    """Record where `service` is (for messages of errors that do not say it)."""
    _where[service] = description


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and all(link is not s for s in seen):
        seen.append(link)
        link = link.__cause__ or link.__context__
    return seen


def _kafka_client_error(exc: BaseException) -> bool:
    from confluent_kafka import KafkaException

    return isinstance(exc, KafkaException)


def _redis_client_error(exc: BaseException) -> bool:
    import redis

    return isinstance(exc, redis.RedisError)


def _one(exc: BaseException) -> Failure | None:
    """The failure `exc` itself stands for, or None if it is not a known error."""
    if isinstance(exc, ClickException):
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        return Failure(EXIT_USAGE, f"{exc.format_message()}{hint}")
    if isinstance(exc, ConfigError):
        return Failure(EXIT_USAGE, str(exc))
    if isinstance(exc, BrokerUnreachableError):
        return Failure(EXIT_KAFKA, str(exc))
    if isinstance(exc, RedisUnreachableError):
        return Failure(EXIT_REDIS, str(exc))
    if isinstance(exc, StackError):
        return Failure(EXIT_STACK, str(exc))
    if isinstance(exc, LogMismatchError | RecoveryStateError):
        return Failure(EXIT_USAGE, str(exc))
    if isinstance(exc, StreamsKafkaError):
        return Failure(EXIT_KAFKA, str(exc))
    if isinstance(exc, StoreUnavailableError | DependencyError):
        return Failure(EXIT_REDIS, str(exc))
    if _kafka_client_error(exc):
        error = exc.args[0] if exc.args else exc
        text = error.str() if hasattr(error, "str") else str(error)
        where = _where.get("kafka", "the broker")
        return Failure(
            EXIT_KAFKA,
            f"Kafka broker at {where}: {text}; check it runs and answers "
            "(`streamrec infra status`)",
        )
    if _redis_client_error(exc):
        where = _where.get("redis", "Redis")
        return Failure(
            EXIT_REDIS,
            f"Redis at {where}: {exc}; check it runs and answers (`streamrec infra status`)",
        )
    if isinstance(exc, StreamsError | FeaturesError | LearnersError | ServingError):
        return Failure(EXIT_USAGE, str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return Failure(EXIT_INTERRUPTED, "interrupted")
    if isinstance(exc, typer.Abort):
        return Failure(EXIT_UNEXPECTED, "aborted")
    if isinstance(exc, InfraError):
        return Failure(EXIT_UNEXPECTED, str(exc))
    return None


def classify(exc: BaseException) -> Failure:
    """The failure of the first known error in `exc`'s chain (outermost first); an unknown one
    is unexpected (exit 1) and the line names its type."""
    for link in _chain(exc):
        failure = _one(link)
        if failure is not None:
            return failure
    text = f": {exc}" if str(exc) else ""
    return Failure(
        EXIT_UNEXPECTED,
        f"unexpected {type(exc).__name__}{text} - a bug; `streamrec --debug ...` prints the "
        "traceback to report",
    )


def fail(exc: BaseException) -> int:
    """Print `exc` as one line on stderr (after its traceback when debugging); its exit code."""
    failure = classify(exc)
    if debugging():
        traceback.print_exception(exc)
    sys.stdout.flush()
    sys.stderr.write(failure.line() + "\n")
    sys.stderr.flush()
    return failure.code
