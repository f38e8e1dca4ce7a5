"""The user behaviour history as a stored feature: each user's last clicked notes in Feast.

Feature view `user_history` (entity `user`) holds one feature, `clicked_notes`, an
`Array(String)` of note ids, newest first - exactly `Sample.history` as the sample joiner
(`streams.samples`) puts it in a training sample, since the joiner is the flow that keeps it and
writes it here (`HistoryWriter`). Feast's Redis online store keeps every view of an entity in
one hash: the history sits beside `user_stats` under the user's key, as field
`mmh3("user_history:clicked_notes")` holding a serialized `ValueProto(string_list_val=...)`,
and `_ts:user_history` the event time it is valid as of (the time of the user's newest click in
it). `FeatureClient.history` reads it in one round trip; `get_online_features(
features=["user_history:clicked_notes"], ...)` returns the same lists
(tests/features/test_history.py).

Point in time: an update written as of time T holds the user's distinct clicked notes with
ts <= T, so a request at any time t > T (until the user's next click) reads what a sample of
an impression at t got - modulo the joiner's lag (its watermark trails the newest events by the
allowed lateness).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import StringList
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from google.protobuf.timestamp_pb2 import Timestamp

from features.errors import FeaturesError
from features.redis_conn import Client, is_cluster

HISTORY_VIEW = "user_history"
"""Feature view of the users' click histories."""
HISTORY_FEATURE = "clicked_notes"
"""Its one feature: note ids, newest first (`Sample.history`)."""
HISTORY_JOB = "history"
"""Name under which the writer records its event-time mark (`features.client.mark_key`)."""

_FIELD = _mmh3(f"{HISTORY_VIEW}:{HISTORY_FEATURE}")
_TS_FIELD = f"_ts:{HISTORY_VIEW}".encode()

__all__ = [
    "HISTORY_FEATURE",
    "HISTORY_JOB",
    "HISTORY_VIEW",
    "HistoryWriter",
    "decode_history",
    "encode_history",
    "history_key",
    "read_history",
]


def history_key(project: str, user_id: str) -> bytes:
    """Feast's Redis key of a user (serialized entity key + project): the hash of every user
    view, `user_stats` included."""
    proto = EntityKeyProto(join_keys=["user_id"], entity_values=[ValueProto(string_val=user_id)])
    return serialize_entity_key(proto, entity_key_serialization_version=3) + project.encode()


def encode_history(notes: Sequence[str]) -> bytes:
    """The stored bytes of a history: `ValueProto(string_list_val=notes)`."""
    return ValueProto(string_list_val=StringList(val=list(notes))).SerializeToString()


def decode_history(raw: bytes | None) -> list[str]:
    """The notes of stored bytes (`encode_history`); [] for nothing stored."""
    if not raw:
        return []
    value = ValueProto.FromString(raw)
    if value.WhichOneof("val") != "string_list_val":
        raise FeaturesError(
            f"{HISTORY_VIEW}:{HISTORY_FEATURE} holds a {value.WhichOneof('val')}, not a list of "
            "note ids: another writer used the field; rerun `streamrec run samples --reset`"
        )
    return list(value.string_list_val.val)


def _stamp(event_ts_ms: int) -> bytes:
    ts = Timestamp()
    ts.FromMilliseconds(int(event_ts_ms))
    return ts.SerializeToString()


class HistoryWriter:
    """Writes users' click histories into Feast's Redis online store (as Feast's push would).

    Args:
        client: a redis-py client of the online store.
        project: the Feast project (`Settings.feast_project`).
        cache_size: entity keys kept (serializing one costs more than the write).
    """

    def __init__(self, client: Client, project: str, cache_size: int = 1_000_000) -> None:
        self.client, self.project = client, project
        self._keys: dict[str, bytes] = {}
        self._cache_size = cache_size

    def key(self, user_id: str) -> bytes:
        """The user's Redis key (cached)."""
        cached = self._keys.get(user_id)
        if cached is None:
            if len(self._keys) >= self._cache_size:
                self._keys.clear()
            cached = self._keys[user_id] = history_key(self.project, user_id)
        return cached

    def write(
        self,
        user_ids: Sequence[str],
        histories: Sequence[Sequence[str]],
        event_ts_ms: Sequence[int],
        mark: tuple[str, int] | None = None,
    ) -> None:
        """Store each user's history, valid as of its event time, in one pipelined round trip.

        A user given more than once keeps the last of its entries (callers pass them in event
        time order). With `mark` (key, ms) the key is raised to ms (never lowered), after the
        values on the same connection (on a cluster, once every node has answered): whoever
        sees the mark sees the histories.
        """
        if not (len(user_ids) == len(histories) == len(event_ts_ms)):
            raise FeaturesError(
                f"{len(user_ids)} users, {len(histories)} histories, {len(event_ts_ms)} times"
            )
        last = {u: j for j, u in enumerate(user_ids)}
        pipe = self.client.pipeline(transaction=False)
        for u, j in last.items():
            pipe.hset(
                self.key(u),
                mapping={_FIELD: encode_history(histories[j]), _TS_FIELD: _stamp(event_ts_ms[j])},
            )
        if mark is None:
            pipe.execute()
        elif is_cluster(self.client):
            # The nodes apply their parts in parallel: the mark goes once all have answered.
            pipe.execute()
            self.client.eval(_MAX_SCRIPT, 1, mark[0], int(mark[1]))
        else:
            pipe.eval(_MAX_SCRIPT, 1, mark[0], int(mark[1]))
            pipe.execute()


_MAX_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""


def read_history(
    client: Client, project: str, user_ids: Sequence[str]
) -> tuple[list[list[str]], np.ndarray]:
    """Stored histories of `user_ids`, one pipelined HMGET each.

    Returns:
        (per user the notes newest first, [] without a stored history; event times (n,) int64
        epoch ms the histories are valid as of, -1 where none is stored).
    """
    pipe = client.pipeline(transaction=False)
    for u in user_ids:
        pipe.hmget(history_key(project, u), [_FIELD, _TS_FIELD])
    rows = pipe.execute() if user_ids else []
    notes = [decode_history(raw) for raw, _ in rows]
    stamps = np.array(
        [-1 if ts is None else Timestamp.FromString(ts).ToMilliseconds() for _, ts in rows],
        dtype=np.int64,
    )
    return notes, stamps
