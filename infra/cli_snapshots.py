"""`streamrec snapshots list | show`: inspect the published embedding snapshots."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infra.cli_options import ConfigOpt, console, settings_from
from learners.errors import LearnersError
from learners.snapshots import Manifest, SnapshotReader, list_models

snapshots_app = typer.Typer(help="Inspect published embedding snapshots.", no_args_is_help=True)

ModelOpt = Annotated[str | None, typer.Option("--model", help="Model name (default: all).")]
RootOpt = Annotated[
    str | None,
    typer.Option(
        "--root",
        help="Snapshot root directory or URL (default: settings snapshots.url, else .root).",
    ),
]


def _root(root: str | None, config: Path | None) -> str:
    return root if root is not None else settings_from(config).snapshots.location


def _models(root: str, model: str | None) -> list[str]:
    return [model] if model is not None else list_models(root)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _size(manifest: Manifest) -> str:
    size = sum(manifest.sizes.values())
    return f"{size / 2**20:,.1f} MiB" if size >= 2**20 else f"{size / 2**10:,.1f} KiB"


def _fail(exc: LearnersError) -> typer.Exit:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(exc))}")
    return typer.Exit(2)


@snapshots_app.command("list")
def snapshots_list(model: ModelOpt = None, root: RootOpt = None, config: ConfigOpt = None) -> None:
    """List the versions of every model (or one): complete ones and unusable directories."""
    where = _root(root, config)
    models = _models(where, model)
    if not models:
        console.print(f"no snapshots under {where}")
        raise typer.Exit(1)
    try:
        for name in models:
            reader = SnapshotReader(where, name)
            table = Table(title=f"{name} ({where.rstrip('/')}/{name})")
            for column in ("version", "kind", "base", "created (UTC)", "event-time hwm (UTC)"):
                table.add_column(column)
            table.add_column("rows", justify="right")
            table.add_column("size", justify="right")
            for m in reader.versions():
                table.add_row(
                    str(m.version),
                    m.kind,
                    "" if m.base_version is None else str(m.base_version),
                    _when(m.created_at_ms),
                    _when(m.hwm_ms),
                    f"{sum(m.rows.values()):,}",
                    _size(m),
                )
            console.print(table)
            for problem in reader.problems():
                console.print(f"[red]unusable:[/red] {problem}")
    except LearnersError as exc:
        raise _fail(exc) from None


def _model_having(root: str, version: int) -> str:
    having = [
        name
        for name in _models(root, None)
        if any(m.version == version for m in SnapshotReader(root, name).versions())
    ]
    if len(having) != 1:
        found = f"models {', '.join(having)} have" if having else "no model has"
        raise typer.BadParameter(
            f"{found} a version {version} under {root}: see `streamrec snapshots list`, "
            "pass --model",
            param_hint="VERSION",
        )
    return having[0]


@snapshots_app.command("show")
def snapshots_show(
    version: Annotated[int, typer.Argument(help="The version to load and verify.")],
    model: ModelOpt = None,
    root: RootOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Load one version (its full and deltas up to it), verify every checksum, describe it."""
    where = _root(root, config)
    try:
        name = model or _model_having(where, version)
        snapshot = SnapshotReader(where, name).load(version)
    except LearnersError as exc:
        raise _fail(exc) from None
    m = snapshot.manifest
    console.print(f"[bold]{m.model}[/bold] version {m.version} ({m.kind}, {_size(m)})")
    if m.base_version is not None:
        console.print(f"base full version {m.base_version}, follows version {m.parent_version}")
    console.print(f"created {_when(m.created_at_ms)} UTC, event-time hwm {_when(m.hwm_ms)} UTC")
    console.print(f"state = versions {', '.join(map(str, snapshot.versions))} (checksums verified)")
    tables = Table(title="embedding tables (consistent state)")
    for column in ("table", "rows", "dim", f"rows in version {m.version}"):
        tables.add_column(column, justify="left" if column == "table" else "right")
    for name, rows in snapshot.tables.items():
        n, dim = rows.weights.shape
        tables.add_row(name, f"{n:,}", str(dim), f"{m.rows.get(name, 0):,}")
    console.print(tables)
    params = sum(a.size for a in snapshot.dense.values())
    console.print(f"dense: {len(snapshot.dense)} tensors, {params:,} parameters")
    for name, digest in m.files.items():
        console.print(f"  {name:20} {m.sizes.get(name, 0):>12,} B  sha256 {digest}")
    if m.meta:
        console.print(f"meta: {m.meta}")
