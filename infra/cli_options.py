"""Options shared by the `streamrec` subcommands (one definition each)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from features.redis_conn import redact
from infra import stack
from infra.cli_errors import remember
from infra.config import Settings, load_settings
from infra.errors import BrokerUnreachableError, ConfigError, RedisUnreachableError, StackError

console = Console()
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML settings file.")]
UntilEndOpt = Annotated[
    bool, typer.Option("--until-end", help="Bounded run: stop at the end of the topic.")
]


KAFKA_TIMEOUT_S = 3.0
"""How long a command waits for the broker's answer to a metadata request before it says so."""
REDIS_TIMEOUT_S = 2.0
"""How long a command waits for Redis's answer to PING before it says so."""


def settings_from(config: Path | None) -> Settings:
    """The settings of a command: the `--config` file (or `$STREAMREC_CONFIG`) and environment.

    Raises:
        ConfigError: the file cannot be read, is not a mapping, or holds invalid settings.
    """
    path = config or (
        Path(os.environ["STREAMREC_CONFIG"]) if os.environ.get("STREAMREC_CONFIG") else None
    )
    if path is not None:
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read the settings file {path}: {exc}") from exc
        if data is not None and not isinstance(data, dict):
            raise ConfigError(
                f"the settings file {path} holds a YAML {type(data).__name__}, not a mapping: "
                "write keys as in infra/config.py (e.g. `kafka: {bootstrap: host:port}`)"
            )
    return load_settings(config)


def _origin(settings: Settings, configured: str | None, variable: str, key: str) -> str:
    """Where an address came from: the environment, the settings file or the recorded stack."""
    if os.environ.get(variable):
        return f"set by {variable}"
    if configured:
        return f"set by `{key}` in the settings file"
    return f"recorded by `streamrec infra up` in {settings.paths.stack / stack.STATE_FILE}"


def _fix(origin: str, variable: str) -> str:
    if origin.startswith("recorded"):
        return "start the stack again (`streamrec infra up`)"
    return f"start it, or point {variable} at one that runs"


def services(settings: Settings, kafka: bool = True, redis: bool = True) -> stack.StackState:
    """Where the broker and Redis are (the settings, else the stack `streamrec infra up`
    recorded), after asking those the command needs: a Kafka metadata request, a Redis PING, each
    with a short timeout. An address the command does not need may be unknown (then "").

    Raises:
        StackError: the settings and the recorded stack do not name a service the command needs.
        BrokerUnreachableError, RedisUnreachableError: it did not answer; the message names its
            address, where the address came from and what to do.
    """
    state = stack.read_state(settings)
    bootstrap = settings.kafka.bootstrap or (state.bootstrap if state else "")
    url = settings.redis.url or (state.redis_url if state else "")
    missing = [
        v
        for v, need, at in (("KAFKA_BOOTSTRAP", kafka, bootstrap), ("REDIS_URL", redis, url))
        if need and not at
    ]
    if missing:
        raise StackError(
            f"no {' or '.join('broker' if m == 'KAFKA_BOOTSTRAP' else 'Redis' for m in missing)} "
            f"is known: run `streamrec infra up` first, or set {' and '.join(missing)}"
        )
    k_origin = _origin(settings, settings.kafka.bootstrap, "KAFKA_BOOTSTRAP", "kafka.bootstrap")
    r_origin = _origin(settings, settings.redis.url, "REDIS_URL", "redis.url")
    remember("kafka", f"{bootstrap} ({k_origin})")
    remember("redis", f"{redact(url)} ({r_origin})")
    if kafka and not stack.kafka_answers(settings.kafka.connect(bootstrap), KAFKA_TIMEOUT_S):
        raise BrokerUnreachableError(
            f"no Kafka broker answers at {bootstrap} ({k_origin}) within "
            f"{KAFKA_TIMEOUT_S:g} s: {_fix(k_origin, 'KAFKA_BOOTSTRAP')}"
        )
    if redis and not stack.redis_answers(url, REDIS_TIMEOUT_S):
        raise RedisUnreachableError(
            f"no Redis answers at {redact(url)} ({r_origin}) within {REDIS_TIMEOUT_S:g} s: "
            f"{_fix(r_origin, 'REDIS_URL')}"
        )
    return stack.StackState(
        kafka=stack.Service(address=bootstrap),
        redis=stack.Service(address=url),
        topics=tuple(settings.kafka.topics.all_names()),
    )


def print_counts(title: str, counts: Counter) -> None:
    """Print a table of counts, largest first, with a total."""
    table = Table(title=title)
    table.add_column("type")
    table.add_column("events", justify="right")
    for kind, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        table.add_row(str(kind), f"{n:,}")
    table.add_row("total", f"{sum(counts.values()):,}", style="bold")
    console.print(table)


def progress_bar(*extra: ProgressColumn, out: Console | None = None) -> Progress:
    """The progress bar of long-running commands: description, bar, done/total, elapsed."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra,
        TimeElapsedColumn(),
        console=out or console,
    )
