"""Options shared by the `streamrec` subcommands (one definition each)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
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

from infra.config import Settings, load_settings

console = Console()
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML settings file.")]
UntilEndOpt = Annotated[
    bool, typer.Option("--until-end", help="Bounded run: stop at the end of the topic.")
]


def settings_from(config: Path | None) -> Settings:
    """The settings of a command: the `--config` file (or `$STREAMREC_CONFIG`) and environment."""
    return load_settings(config)


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
