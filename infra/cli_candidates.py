"""`streamrec candidates USER`: a user's candidates per retrieval channel, as serving sees them."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from infra.cli_options import ConfigOpt, console, services, settings_from
from infra.service import service_for


def candidates(
    user_id: Annotated[str, typer.Argument(help="The user whose candidates to show.")],
    k: Annotated[int, typer.Option(help="Candidates shown per channel.", min=1)] = 10,
    config: ConfigOpt = None,
) -> None:
    """Print each retrieval channel's best candidates for USER (two-tower, fresh, ItemCF, Swing,
    author, context), marking the notes the user was already shown."""
    settings = settings_from(config)
    where = services(settings, kafka=False)
    service = service_for(settings, where.redis_url)
    service.watcher.refresh()
    lists, shown = service.recommender.candidates_by_channel(user_id, k)
    for cand in lists:
        table = Table(title=f"{cand.channel}: {len(cand.ids)} candidates", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("note")
        table.add_column("score", justify="right")
        table.add_column("shown")
        for j, (note, score) in enumerate(zip(cand.ids, cand.scores.tolist(), strict=True)):
            table.add_row(str(j + 1), note, f"{score:.4g}", "yes" if note in shown else "")
        console.print(table)
