"""`FeatureClient`: the one reader of the feature store for users, the CLI and serving.

It reads Feast's Redis online store directly (one pipelined HMGET per entity, see
`features.online_reader`) and returns what `FeatureStore.get_online_features(...).to_dict()`
returns for the same entities - `tests/features/test_client.py` checks the two equal. The Feast
SDK path stays available and equivalent:

    store = features.store.feature_store(redis_url, project, data_dir)
    store.get_online_features(features=["user_stats:clicks_1h"], entity_rows=[{"user_id": "u1"}])

Each streaming job records its event-time high-water mark at `mark_key(project, job)`; the
values read are valid as of that time (`FeatureClient.as_of`). `FeatureClient.history` reads the
users' click histories the sample joiner keeps (`features.history`, view `user_history`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import numpy as np
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from features.errors import UnknownViewError
from features.history import read_history
from features.online_reader import OnlineReader
from features.redis_conn import Client, connect
from features.schema import ENTITY_KEY, feature_types

VIEW_OF = {"user": "user_stats", "note": "note_stats"}
"""Entity name -> its statistics view."""


def mark_key(project: str, job: str) -> str:
    """Redis key of a job's event-time high-water mark (epoch ms) in `project`."""
    return f"{project}:hwm:{job}"


def _python_value(raw: bytes | None) -> int | float | None:
    """The Python value of a stored `ValueProto` (as Feast's `to_dict` gives it)."""
    if not raw:
        return None
    value = ValueProto.FromString(raw)
    kind = value.WhichOneof("val")
    return None if kind is None else getattr(value, kind)


def generation_key(project: str) -> str:
    """Redis key of the online store's generation token (gone when Redis lost its data)."""
    return f"{project}:generation"


class StoreGeneration:
    """The online store's generation: a token kept in Redis beside the data it describes.

    A Redis that restarted empty or was flushed has no token: the first caller then stores a new
    one, and every writer that remembers another token knows the store lost what it wrote.
    """

    def __init__(self, client: Client, project: str) -> None:
        self.client, self.key = client, generation_key(project)

    def current(self) -> str:
        """The store's token (stored anew, at random, if there is none)."""
        self.client.set(self.key, uuid.uuid4().hex, nx=True)
        token = self.client.get(self.key)
        return token.decode() if token is not None else ""


def view_name(entity_or_view: str) -> str:
    """`user` / `note` (entity) or a view name -> the view name."""
    view = VIEW_OF.get(entity_or_view, entity_or_view)
    if view not in ENTITY_KEY:
        raise UnknownViewError(
            f"unknown entity or view {entity_or_view!r}; expected one of {[*VIEW_OF, *ENTITY_KEY]}"
        )
    return view


class FeatureClient:
    """Reads the online features of users and notes, as the stats job wrote them.

    Args:
        client: a redis-py client of the online store (`decode_responses=False`): a `Redis`
            or a `RedisCluster` (`features.redis_conn.connect`).
        project: the Feast project the jobs write (`Settings.feast_project`).
    """

    def __init__(self, client: Client, project: str) -> None:
        self.client = client
        self.project = project
        self._reader = OnlineReader(client, project)

    @classmethod
    def from_url(cls, redis_url: str, project: str, **redis_kwargs: object) -> FeatureClient:
        """A client on `redis_url` - credentials, TLS and `?cluster=true` included
        (`features.redis_conn.connect`; extra arguments go to the redis-py client)."""
        return cls(connect(redis_url, **redis_kwargs), project)

    def read(
        self, view: str, entity_ids: Sequence[str], names: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Values of `names` as a matrix, in one round trip (the serving path).

        Returns:
            (values (n, len(names)) float64, NaN where nothing is stored; event times (n,)
            int64 epoch ms of the stored rows, -1 for entities without a row).
        """
        return self._reader.read(view_name(view), entity_ids, names)

    def get(
        self, entity: str, entity_ids: Sequence[str], names: Sequence[str] | None = None
    ) -> dict[str, list]:
        """Features of `entity` ("user", "note" or a view name) for `entity_ids`.

        Returns:
            What `get_online_features(...).to_dict()` returns: the join key column, then one
            list per feature (int for counts, float for rates; None where nothing is stored).
        """
        view = view_name(entity)
        names = list(feature_types(view)) if names is None else list(names)
        rows, stamps = self._reader.read_raw(view, entity_ids, names)
        out: dict[str, list] = {ENTITY_KEY[view]: list(entity_ids)}
        for j, name in enumerate(names):
            out[name] = [
                None if stamps[i] < 0 else _python_value(row[j]) for i, row in enumerate(rows)
            ]
        return out

    def history(self, user_ids: Sequence[str]) -> tuple[list[list[str]], np.ndarray]:
        """The users' last clicked notes (view `user_history`, written by the sample joiner).

        Returns:
            (per user the note ids newest first, [] when none is stored - a user who never
            clicked; event times (n,) int64 epoch ms each is valid as of, -1 where none).
        """
        return read_history(self.client, self.project, user_ids)

    def stored_at(self, entity: str, entity_ids: Sequence[str]) -> list[int | None]:
        """Event time (epoch ms) each entity's stored row is valid as of; None without a row."""
        view = view_name(entity)
        first = next(iter(feature_types(view)))
        _, stamps = self.read(view, entity_ids, [first])
        return [None if s < 0 else int(s) for s in stamps.tolist()]

    def as_of(self, job: str = "stats") -> int | None:
        """The event-time high-water mark `job` recorded (epoch ms), None before it wrote."""
        raw = self.client.get(mark_key(self.project, job))
        return None if raw is None else int(raw)

    def close(self) -> None:
        """Close the Redis connections."""
        self.client.close()
