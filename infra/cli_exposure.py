"""`streamrec exposure check`: query a user's exposure filter."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infra.cli_options import ConfigOpt, console, services, settings_from

exposure_app = typer.Typer(help="Query the exposure Bloom filters.")


def _time(ms: int | None) -> str:
    if ms is None:
        return "none yet"
    return f"{ms} ms ({datetime.fromtimestamp(ms / 1000, UTC):%Y-%m-%d %H:%M:%S} UTC)"


@exposure_app.command("check")
def exposure_check(
    user: Annotated[str, typer.Argument(help="The user_id.")],
    notes: Annotated[list[str], typer.Argument(help="Note ids to check.")],
    namespace: Annotated[
        str | None, typer.Option(help="Key namespace (default: exposure.namespace).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Print, for each note, whether USER was shown it within the retention window."""
    from features.exposure import ExposureFilter
    from features.redis_conn import connect
    from serving.errors import ServingError

    settings = settings_from(config)
    client = connect(services(settings, kafka=False).redis_url)
    bloom = ExposureFilter(client, namespace or settings.exposure.namespace)
    try:
        seen = bloom.seen(user, notes)
        layout, hwm = bloom.describe()
    except ServingError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    finally:
        client.close()
    table = Table(title=f"exposures of {user}")
    table.add_column("note")
    table.add_column("seen")
    for note, was in zip(notes, seen, strict=True):
        table.add_row(note, "[bold]yes[/bold]" if was else "no")
    console.print(table)
    console.print(
        f"retention {layout.retention_ms / 86_400_000:g} d in {layout.slices} slices of "
        f"{layout.slice_ms / 3_600_000:g} h; {layout.bits} bits x {layout.hashes} hashes per "
        f"slice; design fp {layout.design_fp:.2%} at {layout.expected_items:,} exposures"
    )
    console.print(f"job event-time high-water mark: {_time(hwm)}")
