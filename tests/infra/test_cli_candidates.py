"""`streamrec candidates USER`: each channel's candidates, the shown ones marked."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import redis
from typer.testing import CliRunner

from features.exposure import ExposureConfig, ExposureWriter
from features.history import HistoryWriter
from features.neighbours import NeighbourStore
from infra.cli import app
from learners.snapshots import SnapshotReader
from tests.learners.helpers import publish_trained


def test_candidates_prints_every_channel(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    publish_trained(tmp_path / "snapshots")
    ns = f"c{uuid.uuid4().hex[:6]}"
    config = tmp_path / "settings.yaml"
    config.write_text(
        f"feast_project: p{ns}\nexposure:\n  namespace: {ns}\n"
        f"snapshots:\n  root: {tmp_path / 'snapshots'}\n"
    )
    retriever = SnapshotReader(tmp_path / "snapshots", "retriever").latest()
    notes = sorted(retriever.tables["item"].ids)[:6]
    HistoryWriter(redis_client, f"p{ns}").write(["u1"], [notes[:1]], [1_000])
    NeighbourStore(redis_client, f"p{ns}").write(
        {
            "itemcf": {notes[0]: (notes[1:4], [0.9, 0.8, 0.7])},
            "swing": {notes[0]: ([notes[4]], [2.0])},
        }
    )
    ExposureWriter(redis_client, ExposureConfig(namespace=ns)).add_batch(
        ["u1"], [notes[2]], np.array([10**12])
    )
    done = CliRunner().invoke(
        app,
        ["candidates", "u1", "--k", "5", "--config", str(config)],
        env={"REDIS_URL": redis_url, "STREAMREC_DATA_DIR": str(tmp_path), "COLUMNS": "200"},
    )
    assert done.exit_code == 0, done.output
    for channel in ("two_tower", "itemcf: 3 candidates", "swing: 1 candidates", "author", "fresh"):
        assert channel in done.output
    shown = [line for line in done.output.splitlines() if notes[2] in line and "yes" in line]
    assert shown, done.output  # the note the user was shown is marked
