"""Feast objects of the repository: entities, push sources and the two stats feature views."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, PushSource
from feast.types import Float64, Int64
from feast.value_type import ValueType

from features.schema import ENTITY_KEY, feature_types

DATA = Path(__file__).resolve().parent / "data"
TYPES = {"int64": Int64, "float64": Float64}

user = Entity(
    name="user",
    join_keys=["user_id"],
    value_type=ValueType.STRING,
    description="A user of the app.",
)
note = Entity(
    name="note",
    join_keys=["note_id"],
    value_type=ValueType.STRING,
    description="A note (post or short video).",
)


def offline_dir(project: str) -> Path:
    """Directory of a project's offline log (one parquet part directory per view)."""
    return DATA / project


def _view(name: str, entity: Entity, log_dir: Path) -> FeatureView:
    batch = FileSource(
        name=f"{name}_log",
        path=str(log_dir / name),
        timestamp_field="event_ts",
        description=f"Offline log of {name} rows appended by the stats job (parquet parts).",
    )
    push = PushSource(name=f"{name}_push", batch_source=batch)
    return FeatureView(
        name=name,
        entities=[entity],
        ttl=timedelta(days=31),
        schema=[Field(name=f, dtype=TYPES[t]) for f, t in feature_types(name).items()],
        source=push,
        online=True,
        description=f"Windowed statistics ({ENTITY_KEY[name]}), valid as of event_ts.",
    )


def stats_views(project: str) -> list[FeatureView]:
    """The `user_stats` and `note_stats` views whose batch sources are `project`'s offline log."""
    return [
        _view("user_stats", user, offline_dir(project)),
        _view("note_stats", note, offline_dir(project)),
    ]


# What `feast apply` registers for the repository's own project (feature_store.yaml).
user_stats, note_stats = stats_views("streamrec")
