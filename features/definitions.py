"""Feast objects of the repository: entities, push sources, the two stats feature views and the
users' click history (`features.history`)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, PushSource
from feast.types import Array, Float64, Int64, String
from feast.value_type import ValueType

from features.history import HISTORY_FEATURE, HISTORY_VIEW
from features.offline_log import CREATED, EVENT_TS
from features.paths import DataPaths, default_data_dir
from features.schema import ENTITY_KEY, feature_types

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


def _view(name: str, entity: Entity, log_dir: Path) -> FeatureView:
    batch = FileSource(
        name=f"{name}_log",
        path=str(log_dir / name),
        timestamp_field=EVENT_TS,
        created_timestamp_column=CREATED,
        description=(
            f"Offline log of {name}: a row per entity and change time, valid until the "
            "entity's next row (parquet parts appended by the stats job)."
        ),
    )
    push = PushSource(name=f"{name}_push", batch_source=batch)
    return FeatureView(
        name=name,
        entities=[entity],
        # No TTL: the log holds a row at every change, the last one when the entity's windows
        # empty, so a row is valid until the next; a TTL would turn old zeros into nulls.
        ttl=timedelta(0),
        schema=[Field(name=f, dtype=TYPES[t]) for f, t in feature_types(name).items()],
        source=push,
        online=True,
        description=f"Windowed statistics ({ENTITY_KEY[name]}), valid as of event_ts.",
    )


def stats_views(offline: Path) -> list[FeatureView]:
    """The `user_stats` and `note_stats` views whose batch sources are the offline log `offline`
    (`DataPaths.offline(project)`)."""
    return [_view("user_stats", user, offline), _view("note_stats", note, offline)]


def history_view(offline: Path) -> FeatureView:
    """The `user_history` view: each user's last clicked notes (newest first), written by the
    sample joiner (`streams.samples`, `features.history.HistoryWriter`); its batch source names
    `<offline>/user_history`, which nothing writes yet (the sample log holds every sample's
    history, point-in-time)."""
    batch = FileSource(
        name=f"{HISTORY_VIEW}_log",
        path=str(offline / HISTORY_VIEW),
        timestamp_field=EVENT_TS,
        created_timestamp_column=CREATED,
        description="Offline log of user_history (not written: see the sample log).",
    )
    return FeatureView(
        name=HISTORY_VIEW,
        entities=[user],
        ttl=timedelta(0),  # a history is valid until the user's next click
        schema=[Field(name=HISTORY_FEATURE, dtype=Array(String))],
        source=PushSource(name=f"{HISTORY_VIEW}_push", batch_source=batch),
        online=True,
        description="The user's most recently clicked notes, newest first, as of event_ts.",
    )


# What `feast apply` registers for the repository's own project (feature_store.yaml): the
# offline log of project `streamrec` under the data directory (`$STREAMREC_DATA_DIR`), as the
# jobs write it. Only the `feast` command line reads these module-level views.
_OFFLINE = DataPaths(default_data_dir()).offline("streamrec")
user_stats, note_stats = stats_views(_OFFLINE)
user_history = history_view(_OFFLINE)
