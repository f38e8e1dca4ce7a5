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


def _view(name: str, entity: Entity) -> FeatureView:
    batch = FileSource(
        name=f"{name}_log",
        path=str(DATA / name),
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


user_stats = _view("user_stats", user)
note_stats = _view("note_stats", note)
