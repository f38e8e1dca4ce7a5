"""Where streamrec keeps its files: every path is derived from one data directory.

Layout of a data directory `D` (the `data_dir` setting, `$STREAMREC_DATA_DIR` at entry points):

    D/stack/                       the local stack's state file and service logs
    D/feast/registry-<project>.db  the Feast registry of a project
    D/feast/offline/<project>/<view>/  the offline log (parquet parts) of a feature view
    D/training-samples/            the parquet sample log
    D/experiments/log/             the experiment log (per-arm counts, parquet parts)
    D/snapshots/<model>/<version>/ embedding snapshots
    D/recovery/<job>/              Bytewax recovery stores of the streaming jobs

Nothing is written inside the installed package or relative to the working directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

DATA_DIR_ENV = "STREAMREC_DATA_DIR"


def object_store(location: Path | str) -> tuple[AbstractFileSystem | None, str]:
    """(file system, path in it) of a store at an fsspec URL (`s3://bucket/prefix`); (None, the
    path) for a local directory (a plain path or a `file://` URL).

    The snapshot store and the sample log take either; an object store gets its credentials and
    endpoint from the standard environment of its library (AWS_* for s3://). Its listings are
    never cached: fsspec shares one instance (and its listing cache) per process, and a listing
    cached by one thread while another writes would hand a writer a stale view of the versions
    (measured: a reader thread polling beside a writer made it number 23 of 60 deltas twice).
    """
    text = str(location)
    if "://" not in text or text.startswith("file://"):
        return None, text.removeprefix("file://")
    import fsspec

    fs, path = fsspec.core.url_to_fs(text, use_listings_cache=False)
    return fs, path.rstrip("/")


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$STREAMREC_DATA_DIR`, else `$XDG_DATA_HOME/streamrec`, else `~/.local/share/streamrec`.

    Only entry points call this (the settings loader, and the Feast repository when the `feast`
    command line loads it); library code takes the directory as an argument.
    """
    env = os.environ if env is None else env
    if env.get(DATA_DIR_ENV):
        return Path(env[DATA_DIR_ENV]).expanduser().resolve()
    xdg = env.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return (base / "streamrec").resolve()


@dataclass(frozen=True)
class DataPaths:
    """The paths derived from one data directory."""

    root: Path

    @property
    def stack(self) -> Path:
        """State file and logs of the local stack."""
        return self.root / "stack"

    def registry(self, project: str) -> Path:
        """The Feast registry file of `project`."""
        return self.root / "feast" / f"registry-{project}.db"

    def offline(self, project: str) -> Path:
        """The offline log of `project` (one parquet part directory per feature view)."""
        return self.root / "feast" / "offline" / project

    @property
    def sample_log(self) -> Path:
        """The parquet log of training samples."""
        return self.root / "training-samples"

    @property
    def experiment_log(self) -> Path:
        """The experiment log (per experiment x arm x day x user counts, parquet parts)."""
        return self.root / "experiments" / "log"

    @property
    def snapshots(self) -> Path:
        """Root of the embedding snapshots."""
        return self.root / "snapshots"

    def recovery(self, job: str) -> Path:
        """Bytewax recovery store of a streaming job."""
        return self.root / "recovery" / job
